-- Base schema: the tables, keys and constraints the pipeline relies on, and the append-only
-- event trail. Runs as the owner (postgres) so constraints, not privileges, are what is tested.
begin;
select plan(52);

select has_table('public', t, format('table public.%s exists', t))
from unnest(array['stores', 'mailbox_state', 'conversations', 'messages', 'replies',
                  'credit_ledger', 'events']) as t;

select columns_are('public', 'stores', array[
  'id', 'owner_id', 'name', 'support_email', 'extra_addresses', 'imap_host', 'imap_port',
  'imap_user', 'imap_tls', 'imap_folder', 'imap_password_secret_id', 'smtp_host', 'smtp_port',
  'smtp_user', 'smtp_tls', 'smtp_password_secret_id', 'shopify_domain', 'shopify_token_secret_id',
  'credits', 'active', 'reply_language', 'reply_signature', 'reply_tone', 'reply_mode',
  'created_at', 'updated_at', 'mailbox_sent', 'mailbox_drafts', 'mailbox_mark_answered',
  'mailbox_sent_folder', 'mailbox_drafts_folder', 'low_credits_at'
], 'stores columns as designed (secrets only as ids)');
select columns_are('public', 'messages', array[
  'id', 'store_id', 'conversation_id', 'message_id', 'imap_folder', 'imap_uid', 'from_address',
  'from_name', 'reply_to', 'to_addresses', 'cc_addresses', 'subject', 'sent_at', 'in_reply_to',
  'references', 'headers', 'body_text', 'attachments', 'size_bytes', 'skip_reason', 'received_at'
], 'messages columns as designed');
select columns_are('public', 'replies', array[
  'id', 'store_id', 'conversation_id', 'message_id', 'job_id', 'status', 'to_address', 'subject',
  'body_text', 'smtp_message_id', 'in_reply_to', 'references', 'hold_reason', 'intent',
  'language', 'model', 'error', 'created_at', 'sending_at', 'sent_at', 'author_id', 'author_email',
  'answered_by', 'answered_message_id', 'answered_at'
], 'replies columns as designed');
select columns_are('public', 'events', array[
  'id', 'store_id', 'job_id', 'conversation_id', 'message_id', 'event_type', 'detail',
  'created_at'
], 'events columns as designed');
select col_is_pk('public', 'mailbox_state', array['store_id', 'folder'],
                 'mailbox_state is keyed by store and folder');
select col_is_unique('public', 'messages', array['store_id', 'message_id'],
                     'a Message-ID is stored once per store');
select col_is_unique('public', 'replies', array['message_id'], 'one reply per inbound message');
select col_is_unique('public', 'replies', array['smtp_message_id'],
                     'our outgoing Message-IDs are unique');
select hasnt_fk('public', 'events', 'events has no foreign keys: history outlives its subjects');
select fk_ok('public', 'stores', 'owner_id', 'auth', 'users', 'id', 'stores.owner_id -> auth.users');
select has_index('public', 'credit_ledger', 'credit_ledger_job_reason_key',
                 'one charge and one refund per job');
select has_index('public', 'replies', 'replies_recent_to_idx', 'the reply-cap lookup is indexed');
select has_index('public', 'events', 'events_job_idx', 'events by job are indexed');

insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000000a1', 'owner@example.test');
insert into public.stores (id, owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user, credits)
values ('10000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-0000000000a1', 'Loja',
        'help@loja.test', 'imap.loja.test', 993, 'help', 'smtp.loja.test', 587, 'help', 2);

select is((select row(imap_tls, smtp_tls, imap_folder, active, reply_language, reply_tone,
                     reply_mode, extra_addresses)::text
           from public.stores where id = '10000000-0000-4000-8000-000000000001'),
          row('ssl', 'starttls', 'INBOX', true, 'auto', 'friendly', 'auto_send',
              '{}'::text[])::text,
          'store defaults');

-- Constraints on stores.
select throws_ok($$update public.stores set support_email = 'Help@Loja.test'$$, '23514', null,
                 'support_email must be lower-case');
select throws_ok($$update public.stores set extra_addresses = '{Other@Loja.test}'$$, '23514', null,
                 'extra_addresses must be lower-case');
select throws_ok($$update public.stores set credits = -1$$, '23514', null, 'credits never negative');
select throws_ok($$update public.stores set imap_tls = 'tls'$$, '23514', null, 'imap_tls enumerated');
select throws_ok($$update public.stores set smtp_tls = 'none'$$, '23514', null,
                 'smtp_tls enumerated');
select throws_ok($$update public.stores set reply_mode = 'yolo'$$, '23514', null,
                 'reply_mode enumerated');
select throws_ok($$update public.stores set imap_port = 70000$$, '23514', null, 'port range');
select throws_ok($$update public.stores set reply_language = 'Portuguese'$$, '23514', null,
                 'reply_language is auto or a language tag');

-- updated_at follows every update.
update public.stores set updated_at = '2000-01-01', created_at = '2000-01-01';
select is((select updated_at from public.stores), now(), 'updated_at is set by the trigger');

insert into public.conversations (id, store_id, customer_email, subject)
values ('20000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001',
        'ana@cliente.test', 'Pedido');
insert into public.messages (id, store_id, conversation_id, message_id, from_address)
values ('30000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001',
        '20000000-0000-4000-8000-000000000001', '<m1@cliente.test>', 'ana@cliente.test');

select throws_ok($$insert into public.messages (store_id, conversation_id, message_id)
                   values ('10000000-0000-4000-8000-000000000001',
                           '20000000-0000-4000-8000-000000000001', '<m1@cliente.test>')$$,
                 '23505', null, 'the same Message-ID twice in one store is refused');
select throws_ok($$insert into public.messages (store_id, conversation_id, message_id,
                                                from_address)
                   values ('10000000-0000-4000-8000-000000000001',
                           '20000000-0000-4000-8000-000000000001', '<m2@cliente.test>',
                           'Ana@Cliente.test')$$,
                 '23514', null, 'from_address must be lower-case');
select throws_ok($$insert into public.messages (store_id, conversation_id, message_id,
                                                to_addresses)
                   values ('10000000-0000-4000-8000-000000000001',
                           '20000000-0000-4000-8000-000000000001', '<m3@cliente.test>',
                           '{Help@Loja.test}')$$,
                 '23514', null, 'to_addresses must be lower-case');
select throws_ok($$insert into public.messages (store_id, conversation_id, message_id, headers)
                   values ('10000000-0000-4000-8000-000000000001',
                           '20000000-0000-4000-8000-000000000001', '<m4@cliente.test>',
                           '[]')$$,
                 '23514', null, 'headers must be a JSON object');

insert into public.replies (id, store_id, conversation_id, message_id, to_address,
                            smtp_message_id)
values ('40000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001',
        '20000000-0000-4000-8000-000000000001', '30000000-0000-4000-8000-000000000001',
        'ana@cliente.test', '<r1@loja.test>');
select is((select status from public.replies), 'drafted', 'a reply starts drafted');
select throws_ok($$insert into public.replies (store_id, message_id, to_address)
                   values ('10000000-0000-4000-8000-000000000001',
                           '30000000-0000-4000-8000-000000000001', 'ana@cliente.test')$$,
                 '23505', null, 'a second reply to the same message is refused');
select throws_ok($$update public.replies set status = 'bounced'$$, '23514', null,
                 'reply status enumerated');
select throws_ok($$update public.replies set status = 'sent'$$, '23514', null,
                 'a sent reply has sent_at');
select throws_ok($$update public.replies set status = 'sending'$$, '23514', null,
                 'a sending reply has sending_at');
select throws_ok($$update public.replies set to_address = 'Ana@Cliente.test'$$, '23514', null,
                 'to_address must be lower-case');

-- Ledger: one charge per job, at most.
insert into public.credit_ledger (store_id, job_id, delta, reason)
values ('10000000-0000-4000-8000-000000000001', '50000000-0000-4000-8000-000000000001', -1,
        'reply');
select throws_ok($$insert into public.credit_ledger (store_id, job_id, delta, reason)
                   values ('10000000-0000-4000-8000-000000000001',
                           '50000000-0000-4000-8000-000000000001', -1, 'reply')$$,
                 '23505', null, 'a job is charged once');
select lives_ok($$insert into public.credit_ledger (store_id, delta, reason)
                  values ('10000000-0000-4000-8000-000000000001', 5, 'topup'),
                         ('10000000-0000-4000-8000-000000000001', 5, 'topup')$$,
                'top-ups without a job are not limited');
select throws_ok($$insert into public.credit_ledger (store_id, delta, reason)
                   values ('10000000-0000-4000-8000-000000000001', 1, 'gift')$$,
                 '23514', null, 'ledger reason enumerated');
select throws_ok($$insert into public.credit_ledger (store_id, delta, reason)
                   values ('10000000-0000-4000-8000-000000000001', 0, 'topup')$$,
                 '23514', null, 'a zero movement is refused');

-- Events: dotted types, append-only even for the owner; they survive the store's deletion.
insert into public.events (store_id, event_type, detail)
values ('10000000-0000-4000-8000-000000000001', 'message.received', '{"n": 1}');
select throws_ok($$insert into public.events (event_type) values ('MessageReceived')$$, '23514',
                 null, 'event types are dotted lower-case names');
select throws_ok($$update public.events set detail = '{}'$$, '42501', 'events are append-only',
                 'nobody may rewrite an event, not even the owner');
select is((select detail from public.events where event_type = 'message.received'), '{"n": 1}',
          'the event is unchanged');

delete from public.stores where id = '10000000-0000-4000-8000-000000000001';
select is((select count(*)::int from public.messages
           where store_id = '10000000-0000-4000-8000-000000000001'), 0, 'deleting a store cascades to messages');
select is((select count(*)::int from public.replies
           where store_id = '10000000-0000-4000-8000-000000000001'), 0, '... replies');
select is((select count(*)::int from public.conversations
           where store_id = '10000000-0000-4000-8000-000000000001'), 0, '... conversations');
select is((select count(*)::int from public.credit_ledger
           where store_id = '10000000-0000-4000-8000-000000000001'), 0, '... and the ledger');
select is((select count(*)::int from public.events
           where store_id = '10000000-0000-4000-8000-000000000001'), 1,
          'but its events remain');

select * from finish();
rollback;
