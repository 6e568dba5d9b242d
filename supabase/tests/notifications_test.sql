-- Notifications (issue 12 item 1): notify_people records one item per (store, kind, ref) while
-- it is unresolved and keeps exactly one pending `notify` job per store, spaced by the store's
-- digest settings; resolve_notifications closes an item; RLS shows a store's people only their
-- own store's items. Runs as service_role unless stated.
begin;
select plan(26);

insert into auth.users (id, email) values
  ('00000000-0000-4000-8000-0000000000a1', 'owner-a@example.test'),
  ('00000000-0000-4000-8000-0000000000b1', 'owner-b@example.test');
insert into public.stores (id, owner_id, name, support_email, imap_host, imap_port, imap_user,
                           smtp_host, smtp_port, smtp_user)
values
  ('30000000-0000-4000-8000-00000000000a', '00000000-0000-4000-8000-0000000000a1', 'A',
   'help@a.test', 'imap.a.test', 993, 'help', 'smtp.a.test', 587, 'help'),
  ('30000000-0000-4000-8000-00000000000b', '00000000-0000-4000-8000-0000000000b1', 'B',
   'help@b.test', 'imap.b.test', 993, 'help', 'smtp.b.test', 587, 'help');

create function pg_temp.items(p_store text) returns int language sql as $$
  select count(*)::int from public.notifications where store_id = p_store::uuid
$$;
create function pg_temp.pending_jobs(p_store text) returns int language sql as $$
  select count(*)::int from public.job_queue
  where store_id = p_store::uuid and job_type = 'notify' and status = 'pending'
$$;
grant execute on all functions in schema pg_temp to service_role;

set local role service_role;

-- The contract's shape and privileges.
select function_returns('public', 'notify_people', array['uuid', 'text', 'text', 'jsonb'], 'void',
                        'notify_people(uuid, text, text, jsonb) returns void');
select ok(has_function_privilege('service_role', 'public.notify_people(uuid,text,text,jsonb)',
                                 'EXECUTE')
          and not has_function_privilege('authenticated',
                                         'public.notify_people(uuid,text,text,jsonb)', 'EXECUTE')
          and not has_function_privilege('anon', 'public.notify_people(uuid,text,text,jsonb)',
                                         'EXECUTE'),
          'only service_role may call notify_people');
select is((public.job_retry_policy('notify')).max_attempts, 8,
          'notify jobs have their own retry policy');

-- One item per (store, kind, ref); one pending digest job per store.
select lives_ok($$select public.notify_people('30000000-0000-4000-8000-00000000000a', 'held_reply',
                                              'reply-1', '{"subject": "Pedido"}')$$,
                'a held reply is recorded');
select is(pg_temp.items('30000000-0000-4000-8000-00000000000a'), 1, 'one item');
select is(pg_temp.pending_jobs('30000000-0000-4000-8000-00000000000a'), 1,
          'and one pending notify job for the store');
select public.notify_people('30000000-0000-4000-8000-00000000000a', 'held_reply', 'reply-1',
                            '{"subject": "changed"}');
select is(pg_temp.items('30000000-0000-4000-8000-00000000000a'), 1,
          'the same (store, kind, ref) again adds no item');
select is((select detail ->> 'subject' from public.notifications where ref = 'reply-1'), 'Pedido',
          'and leaves the first item as it was');
select public.notify_people('30000000-0000-4000-8000-00000000000a', 'dead_letter', 'job-1');
select is(pg_temp.items('30000000-0000-4000-8000-00000000000a'), 2,
          'another kind or ref is another item');
select is(pg_temp.pending_jobs('30000000-0000-4000-8000-00000000000a'), 1,
          'both wait for the same digest job');
select is((select payload from public.job_queue
           where store_id = '30000000-0000-4000-8000-00000000000a' and job_type = 'notify'),
          '{"store_id": "30000000-0000-4000-8000-00000000000a"}'::jsonb,
          'the digest job names its store');
select ok((select next_retry_at between now() + interval '59 seconds'
                                    and now() + interval '61 seconds'
           from public.job_queue
           where store_id = '30000000-0000-4000-8000-00000000000a' and job_type = 'notify'),
          'the first digest waits digest_wait_seconds (60) to gather a burst');

-- Unknown kinds are loud; unknown stores are ignored.
select throws_ok($$select public.notify_people('30000000-0000-4000-8000-00000000000a', 'oops',
                                               'x')$$,
                 '22023', null, 'an unknown kind raises');
select throws_ok($$select public.notify_people('30000000-0000-4000-8000-00000000000a',
                                               'dead_letter', '')$$,
                 '22023', null, 'an empty ref raises');
select lives_ok($$select public.notify_people('30000000-0000-4000-8000-0000000000ff',
                                              'dead_letter', 'job-x')$$,
                'an unknown store is ignored');
select is((select count(*)::int from public.notifications where ref = 'job-x'), 0,
          'and records nothing');

-- The interval: once a digest was taken, the next one waits digest_interval_minutes after it.
insert into public.notification_settings (store_id, digest_interval_minutes, digest_wait_seconds)
values ('30000000-0000-4000-8000-00000000000b', 30, 0);
insert into public.notification_digests (job_id, store_id, created_at)
values ('40000000-0000-4000-8000-000000000001', '30000000-0000-4000-8000-00000000000b',
        now() - interval '10 minutes');
select public.notify_people('30000000-0000-4000-8000-00000000000b', 'credentials_failed',
                            'imap:30000000-0000-4000-8000-00000000000b');
select ok((select next_retry_at between now() + interval '19 minutes 59 seconds'
                                    and now() + interval '20 minutes 1 second'
           from public.job_queue
           where store_id = '30000000-0000-4000-8000-00000000000b' and job_type = 'notify'),
          'a digest 10 minutes ago puts the next one 20 minutes out (interval 30)');

-- Resolution: an untaken item is not sent; the same ref later is a new item.
select is(public.resolve_notifications('30000000-0000-4000-8000-00000000000b',
                                       'credentials_failed',
                                       'imap:30000000-0000-4000-8000-00000000000b'), 1,
          'resolve_notifications closes the open item');
select is((select status from public.notifications
           where store_id = '30000000-0000-4000-8000-00000000000b'), 'resolved',
          'an item no digest took is not sent');
select public.notify_people('30000000-0000-4000-8000-00000000000b', 'credentials_failed',
                            'imap:30000000-0000-4000-8000-00000000000b');
select is(pg_temp.items('30000000-0000-4000-8000-00000000000b'), 2,
          'after resolution the same ref is told again');
select is(pg_temp.pending_jobs('30000000-0000-4000-8000-00000000000b'), 1,
          'still one pending digest job for the store');
select is(public.resolve_notifications('30000000-0000-4000-8000-00000000000b',
                                       'credentials_failed', 'smtp:none'), 0,
          'resolving what is not open changes nothing');

-- RLS: a store's people read their own store's items, settings and digests only.
reset role;
set local role authenticated;
set local request.jwt.claims to '{"sub": "00000000-0000-4000-8000-0000000000a1", "role": "authenticated"}';
select is(array(select distinct store_id::text from public.notifications),
          array['30000000-0000-4000-8000-00000000000a'],
          'the owner of A sees only A''s notifications');
select is((select count(*)::int from public.notification_digests), 0,
          'and none of B''s digests');
select is(array(select store_id::text from public.notification_settings),
          array['30000000-0000-4000-8000-00000000000a'], 'and only A''s settings');
reset role;
set local role anon;
select throws_ok($$select count(*) from public.notifications$$, '42501', null,
                 'anon reads nothing');

select * from finish();
rollback;
