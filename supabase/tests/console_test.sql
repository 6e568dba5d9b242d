-- The support console (issue 11): membership RLS, the console's reads and actions, who may do
-- what, conversation status, and that a held reply approved twice is sent once.
begin;
select plan(79);

-- People: owner and agent of store A, owner of store B, a stranger, an operator.
insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000000a1', 'owner-a@example.test'),
  ('00000000-0000-4000-8000-0000000000a2', 'agent-a@example.test'),
  ('00000000-0000-4000-8000-0000000000b1', 'owner-b@example.test'),
  ('00000000-0000-4000-8000-0000000000c1', 'stranger@example.test'),
  ('00000000-0000-4000-8000-0000000000d1', 'operator@example.test');
-- A low-credit threshold below the balances used here, so no warning (and its notify job) joins
-- the jobs this test counts (credits_wait_test covers the warning).
insert into public.stores (id, owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user, credits, low_credits_at)
values
  ('10000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-0000000000a1', 'A',
   'help@a.test', 'imap.a.test', 993, 'help', 'smtp.a.test', 587, 'help', 10, 5),
  ('10000000-0000-4000-8000-00000000000b', '00000000-0000-4000-8000-0000000000b1', 'B',
   'help@b.test', 'imap.b.test', 993, 'help', 'smtp.b.test', 587, 'help', 10, 5);
-- This file counts the console's jobs; the mailbox's own jobs (a reply's trigger) are proven in
-- mailbox_record_test.sql.
update public.stores set mailbox_sent = 'never', mailbox_drafts = false,
                         mailbox_mark_answered = false;
select lives_ok($$select public.add_store_member('10000000-0000-4000-8000-00000000000a',
                                                 'AGENT-A@example.test', 'agent')$$,
                'add_store_member links a person by email');
select results_eq(
  $$select store_id::text, user_id::text, role from public.store_members order by role, store_id$$,
  $$values ('10000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-0000000000a2', 'agent'),
           ('10000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-0000000000a1', 'owner'),
           ('10000000-0000-4000-8000-00000000000b', '00000000-0000-4000-8000-0000000000b1', 'owner')$$,
  'stores.owner_id is mirrored into store_members as the owner');
select throws_ok($$select public.add_store_member('10000000-0000-4000-8000-00000000000a',
                                                  'nobody@example.test', 'agent')$$,
                 'PT404', null, 'an unknown email is refused');

-- Conversations: A1 (held reply), A2 (held reply), A3 (no reply), B1 (held reply).
insert into public.conversations (id, store_id, customer_email, subject, last_message_at) values
  ('20000000-0000-4000-8000-0000000000a1', '10000000-0000-4000-8000-00000000000a',
   'ana@c.test', 'Where is my order?', now() - interval '3 minutes'),
  ('20000000-0000-4000-8000-0000000000a2', '10000000-0000-4000-8000-00000000000a',
   'bia@c.test', 'Broken mug', now() - interval '2 minutes'),
  ('20000000-0000-4000-8000-0000000000a3', '10000000-0000-4000-8000-00000000000a',
   'spam@c.test', 'WIN NOW', now() - interval '1 minute'),
  ('20000000-0000-4000-8000-0000000000b1', '10000000-0000-4000-8000-00000000000b',
   'yan@c.test', 'Refund', now());
insert into public.messages (id, store_id, conversation_id, message_id, from_address, subject,
                             body_text, "references") values
  ('30000000-0000-4000-8000-0000000000a1', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a1', '<a1@c.test>', 'ana@c.test', 'Where is my order?',
   'Order #1001 has not arrived', '{}'),
  ('30000000-0000-4000-8000-0000000000a2', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a2', '<a2@c.test>', 'bia@c.test', 'Broken mug',
   'It arrived broken', '{}'),
  ('30000000-0000-4000-8000-0000000000a3', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a3', '<a3@c.test>', 'spam@c.test', 'WIN NOW', 'prize',
   '{}'),
  ('30000000-0000-4000-8000-0000000000b1', '10000000-0000-4000-8000-00000000000b',
   '20000000-0000-4000-8000-0000000000b1', '<b1@c.test>', 'yan@c.test', 'Re: Refund',
   'Refund please', '{<b0@c.test>}');
-- Held replies that still carry their charge (keyed by the process job), as a reply held in
-- doubt does: a draft the pipeline holds is refunded when saved (credits_wait_test).
select public.reserve_credit(s, j::uuid) from (values
  ('10000000-0000-4000-8000-00000000000a'::uuid, '40000000-0000-4000-8000-0000000000a1'),
  ('10000000-0000-4000-8000-00000000000a'::uuid, '40000000-0000-4000-8000-0000000000a2'),
  ('10000000-0000-4000-8000-00000000000b'::uuid, '40000000-0000-4000-8000-0000000000b1')) v(s, j);
insert into public.replies (id, store_id, conversation_id, message_id, job_id, status, to_address,
                            subject, body_text, smtp_message_id, hold_reason) values
  ('50000000-0000-4000-8000-0000000000a1', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a1', '30000000-0000-4000-8000-0000000000a1',
   '40000000-0000-4000-8000-0000000000a1', 'held', 'ana@c.test', 'Re: Where is my order?',
   'Draft A1', '<reply-a1@a.test>', 'needs_human'),
  ('50000000-0000-4000-8000-0000000000a2', '10000000-0000-4000-8000-00000000000a',
   '20000000-0000-4000-8000-0000000000a2', '30000000-0000-4000-8000-0000000000a2',
   '40000000-0000-4000-8000-0000000000a2', 'held', 'bia@c.test', 'Re: Broken mug',
   'Draft A2', '<reply-a2@a.test>', 'complaint'),
  ('50000000-0000-4000-8000-0000000000b1', '10000000-0000-4000-8000-00000000000b',
   '20000000-0000-4000-8000-0000000000b1', '30000000-0000-4000-8000-0000000000b1',
   '40000000-0000-4000-8000-0000000000b1', 'held', 'yan@c.test', 'Re: Refund',
   'Draft B1', '<reply-b1@b.test>', 'needs_human');
-- Dead letters of both stores.
insert into public.job_queue (id, job_type, status, store_id, attempt_count, dead_lettered_at,
                              last_error, last_error_type) values
  ('60000000-0000-4000-8000-0000000000a1', 'process_email', 'dead_letter',
   '10000000-0000-4000-8000-00000000000a', 5, now(), 'smtp: 550', 'permanent'),
  ('60000000-0000-4000-8000-0000000000b1', 'process_email', 'dead_letter',
   '10000000-0000-4000-8000-00000000000b', 5, now(), 'smtp: 550', 'permanent');

-- Status follows the pipeline.
select results_eq(
  $$select status from public.conversations order by id$$,
  $$values ('waiting'), ('waiting'), ('open'), ('waiting')$$,
  'a held reply puts its conversation in waiting; new mail is open');
select is((select order_numbers from public.conversations
           where id = '20000000-0000-4000-8000-0000000000a1'), array['1001'],
          'order numbers the customer wrote are recorded');
insert into public.events (store_id, conversation_id, event_type)
values ('10000000-0000-4000-8000-00000000000a', '20000000-0000-4000-8000-0000000000a3',
        'process.spam');
select is((select status from public.conversations
           where id = '20000000-0000-4000-8000-0000000000a3'), 'spam',
          'a process.spam event marks the conversation spam');

-- Who may execute what.
select ok(has_function_privilege('authenticated', 'public.console_send_reply(uuid, text)',
                                 'execute'), 'a signed-in person may call console actions');
select ok(not has_function_privilege('anon', 'public.console_send_reply(uuid, text)', 'execute'),
          'anon may not');
select ok(not has_function_privilege('authenticated', 'public.load_reply_context(uuid)',
                                     'execute'), 'the worker''s loader is not for people');
select ok(not has_function_privilege('authenticated', 'public.add_store_member(uuid, text, text)',
                                     'execute'), 'people cannot add members themselves');
select ok(not has_function_privilege('authenticated',
                                     'public.console_enqueue_send(public.replies, uuid)',
                                     'execute'), 'nor enqueue sends directly');
select table_privs_are('public', 'store_members', 'authenticated', array['SELECT'],
                       'authenticated may only read store_members');

-- The agent of store A -------------------------------------------------------------------------
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a2", "role": "authenticated",
    "email": "agent-a@example.test"}';
select is((select count(*)::int from public.conversations), 3, 'the agent sees store A''s three');
select is((select count(*)::int from public.replies), 2, 'and its two replies');
-- Store A's dead letter and the notify job its held replies and dead letter scheduled.
select results_eq(
  $$select job_type, store_id::text from public.job_queue order by job_type$$,
  $$values ('notify', '10000000-0000-4000-8000-00000000000a'),
           ('process_email', '10000000-0000-4000-8000-00000000000a')$$,
  'and its jobs only');
select is((select count(*)::int from public.store_members), 2, 'and store A''s members only');
select is(jsonb_array_length(public.console_conversations() -> 'items'), 3,
          'console_conversations lists store A''s only');
select is(jsonb_array_length(public.console_needs_person() -> 'items'), 2,
          'the needs-a-person queue holds A1 and A2');
select is(public.console_needs_person() -> 'counts' -> 0 ->> 'waiting', '2',
          'counted per store');
select is(public.console_conversations(p_q => '#1001') -> 'items' -> 0 ->> 'id',
          '20000000-0000-4000-8000-0000000000a1', 'search by order number');
select is(public.console_conversations(p_q => 'BIA@') -> 'items' -> 0 ->> 'id',
          '20000000-0000-4000-8000-0000000000a2', 'search by customer address');
select is(public.console_conversations(p_q => 'broken') -> 'items' -> 0 ->> 'id',
          '20000000-0000-4000-8000-0000000000a2', 'search by subject');
select is(jsonb_array_length(public.console_conversations(p_status => 'spam') -> 'items'), 1,
          'filter by status');
select is(jsonb_array_length(public.console_conversations(p_limit => 2) -> 'items'), 2,
          'pages are limited');
select is(jsonb_array_length(public.console_conversations(
            p_limit => 2,
            p_before_at => (public.console_conversations(p_limit => 2) -> 'next' ->> 'before_at')::timestamptz,
            p_before_id => (public.console_conversations(p_limit => 2) -> 'next' ->> 'before_id')::uuid)
          -> 'items'), 1, 'the next page holds the rest');
select is(jsonb_array_length(public.console_conversations(
            p_store_id => '10000000-0000-4000-8000-00000000000b') -> 'items'), 0,
          'asking for store B by id lists nothing');
select is(public.console_conversation('20000000-0000-4000-8000-0000000000a1')
            -> 'thread' -> 0 ->> 'kind', 'customer', 'the thread starts with the customer');
select is(public.console_conversation('20000000-0000-4000-8000-0000000000a1')
            -> 'thread' -> 1 ->> 'status', 'held', 'then the held reply');
select throws_ok($$select public.console_conversation('20000000-0000-4000-8000-0000000000b1')$$,
                 '42501', null, 'store B''s conversation: not yours');
select throws_ok($$select public.console_conversation('20000000-0000-4000-8000-0000000000ff')$$,
                 'PT404', null, 'an unknown conversation: not found');
select throws_ok($$select public.console_send_reply('50000000-0000-4000-8000-0000000000b1')$$,
                 '42501', null, 'the agent cannot send store B''s reply');
select throws_ok($$select public.console_discard_reply('50000000-0000-4000-8000-0000000000b1')$$,
                 '42501', null, 'nor discard it');
select throws_ok($$select public.console_write_reply('20000000-0000-4000-8000-0000000000b1', 'x')$$,
                 '42501', null, 'nor write to store B''s customer');
select throws_ok($$select public.console_close_conversation('20000000-0000-4000-8000-0000000000b1')$$,
                 '42501', null, 'nor close store B''s conversation');
select throws_ok($$select public.console_requeue_dead_letter('60000000-0000-4000-8000-0000000000a1')$$,
                 '42501', null, 'an agent cannot requeue dead letters');
select throws_ok($$select public.console_purge_dead_letters(
                     array['60000000-0000-4000-8000-0000000000a1']::uuid[])$$,
                 '42501', null, 'an agent cannot purge dead letters');
select throws_ok($$select public.console_queue_metrics()$$, '42501', null,
                 'queue metrics are for operators');
select throws_ok($$update public.replies set status = 'drafted'$$, '42501', null,
                 'no direct writes to replies');

-- Discard A2: the draft is not sent, its credit comes back, the conversation closes.
select is(public.console_discard_reply('50000000-0000-4000-8000-0000000000a2', 'duplicate')
            ->> 'status', 'discarded', 'the agent discards a held reply');
select throws_ok($$select public.console_discard_reply('50000000-0000-4000-8000-0000000000a2')$$,
                 'PT409', null, 'discarding twice: 409');
reset role;
select is((select credits from public.stores where name = 'A'), 9,
          'the discarded draft''s credit came back');
select is((select status from public.conversations
           where id = '20000000-0000-4000-8000-0000000000a2'), 'closed',
          'the conversation is closed');

-- The owner of store A sends A1 twice: one job, one send -------------------------------------------
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a1", "role": "authenticated",
    "email": "owner-a@example.test"}';
select is(public.console_send_reply('50000000-0000-4000-8000-0000000000a1', 'Edited A1')
            ->> 'status', 'drafted', 'sending a held reply drafts it');
select throws_ok($$select public.console_send_reply('50000000-0000-4000-8000-0000000000a1')$$,
                 'PT409', null, 'sending it again: 409');
select throws_ok($$select public.console_write_reply('20000000-0000-4000-8000-0000000000a1', 'x')$$,
                 'PT409', null, 'writing over a reply on its way: 409');
select lives_ok($$select public.console_requeue_dead_letter('60000000-0000-4000-8000-0000000000a1')$$,
                'the owner requeues its store''s dead letter');
select throws_ok($$select public.console_requeue_dead_letter('60000000-0000-4000-8000-0000000000a1')$$,
                 'PT409', null, 'requeueing a job that is not dead-lettered: 409');
select throws_ok($$select public.console_requeue_dead_letter('60000000-0000-4000-8000-0000000000b1')$$,
                 '42501', null, 'but not store B''s');
select throws_ok($$select public.console_close_conversation('20000000-0000-4000-8000-0000000000a2')$$,
                 'PT409', null, 'closing a closed conversation: 409');
select is(public.console_close_conversation('20000000-0000-4000-8000-0000000000a3', 'spam')
            ->> 'status', 'closed', 'closing without a reply');
reset role;

select results_eq(
  $$select status, body_text, author_id::text from public.replies
    where id = '50000000-0000-4000-8000-0000000000a1'$$,
  $$values ('drafted', 'Edited A1', '00000000-0000-4000-8000-0000000000a1')$$,
  'the reply carries the edited body and who approved it');
select is((select count(*)::int from public.job_queue
           where job_type = 'send_reply'
             and payload ->> 'reply_id' = '50000000-0000-4000-8000-0000000000a1'), 1,
          'exactly one send_reply job');
select is(public.begin_send('50000000-0000-4000-8000-0000000000a1'), 'ok',
          'the send job''s gate opens once');
select is(public.begin_send('50000000-0000-4000-8000-0000000000a1'), 'in_doubt',
          'and never again');
select is((select credits from public.stores where name = 'A'), 9,
          'approving a held reply that carries its charge charges nothing more');
select is((select detail -> 'by' ->> 'email' from public.events
           where event_type = 'console.reply_approved'), 'owner-a@example.test',
          'the approval event records who');
select is((select count(*)::int from public.events where event_type like 'console.%'
             and detail -> 'by' ->> 'user_id' is not null), 4,
          'every action recorded who did it');
select is((select status from public.conversations
           where id = '20000000-0000-4000-8000-0000000000a3'), 'closed', 'A3 is closed');

-- Store settings: the owner changes its store's voice; agents and strangers cannot.
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a1", "role": "authenticated"}';
select is(public.console_update_store('10000000-0000-4000-8000-00000000000a',
            '{"reply_mode": "draft_only", "reply_tone": "formal"}') ->> 'reply_mode',
          'draft_only', 'the owner switches its store to draft-only');
select throws_ok($$select public.console_update_store('10000000-0000-4000-8000-00000000000a',
                     '{"reply_mode": "sometimes"}')$$, '23514', null,
                 'the table''s checks refuse a bad value');
select throws_ok($$select public.console_update_store('10000000-0000-4000-8000-00000000000a',
                     '{"credits": 1000}')$$, 'PT400', null,
                 'credits are not a setting a person changes');
select throws_ok($$select public.console_update_store('10000000-0000-4000-8000-00000000000b',
                     '{"reply_tone": "rude"}')$$, '42501', null,
                 'nor another store''s settings');
reset role;
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000a2", "role": "authenticated"}';
select throws_ok($$select public.console_update_store('10000000-0000-4000-8000-00000000000a',
                     '{"reply_tone": "casual"}')$$, '42501', null,
                 'an agent cannot change the store''s settings');
reset role;
select results_eq($$select reply_mode, reply_tone, credits from public.stores where name = 'A'$$,
                  $$values ('draft_only', 'formal', 9)$$, 'only the owner''s change landed');
select is((select detail -> 'by' ->> 'user_id' from public.events
           where event_type = 'console.store_updated'),
          '00000000-0000-4000-8000-0000000000a1', 'the change records who made it');

-- The owner of store B writes a reply from scratch over its held draft.
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000b1", "role": "authenticated",
    "email": "owner-b@example.test"}';
select is(public.console_write_reply('20000000-0000-4000-8000-0000000000b1', 'Written by B')
            ->> 'status', 'drafted', 'writing a reply drafts it');
select throws_ok($$select public.console_write_reply('20000000-0000-4000-8000-0000000000b1', 'again')$$,
                 'PT409', null, 'writing again while it is on its way: 409');
select throws_ok($$select public.console_write_reply('20000000-0000-4000-8000-0000000000b1', ' ')$$,
                 'PT400', null, 'an empty reply is refused');
reset role;
select results_eq(
  $$select body_text, in_reply_to, "references", subject from public.replies
    where id = '50000000-0000-4000-8000-0000000000b1'$$,
  $$values ('Written by B', '<b1@c.test>', array['<b0@c.test>', '<b1@c.test>'], 'Re: Refund')$$,
  'threaded to the customer''s message');

-- A stranger -----------------------------------------------------------------------------------
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000c1", "role": "authenticated"}';
select is(public.console_stores(), '[]'::jsonb, 'a stranger has no stores');
select is(jsonb_array_length(public.console_conversations() -> 'items'), 0,
          'and sees no conversation');
select is(public.console_dead_letters(), '[]'::jsonb, 'and no dead letter');
select throws_ok($$select public.console_send_reply('50000000-0000-4000-8000-0000000000a1')$$,
                 '42501', null, 'and cannot act');
reset role;

-- Signed out (no subject) ------------------------------------------------------------------------
set local role authenticated;
set local request.jwt.claims to '';
select throws_ok($$select public.console_send_reply('50000000-0000-4000-8000-0000000000a1')$$,
                 '42501', null, 'no subject, no action');
reset role;

-- The operator ---------------------------------------------------------------------------------
set local role authenticated;
set local request.jwt.claims to
  '{"sub": "00000000-0000-4000-8000-0000000000d1", "role": "authenticated",
    "app_metadata": {"operator": true}}';
select is(jsonb_array_length(public.console_stores()), 2, 'the operator sees every store');
select is(jsonb_array_length(public.console_conversations() -> 'items'), 4,
          'and every conversation');
select is(public.console_dead_letters() -> 0 ->> 'id', '60000000-0000-4000-8000-0000000000b1',
          'and every dead letter');
select lives_ok($$select public.console_queue_metrics(24)$$, 'and the queue metrics');
select is(public.console_purge_dead_letters(array['60000000-0000-4000-8000-0000000000b1']::uuid[]),
          1, 'the operator purges a dead letter');
reset role;

select * from finish();
rollback;
