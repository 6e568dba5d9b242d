-- Retention: purge_completed_jobs commits per batch, so it is CALLed outside a transaction here
-- (as pg_cron does) and the test cleans up after itself.
select plan(4);

delete from public.job_queue where job_type = 't_retention';
insert into public.job_queue (job_type, status, idempotency_key, started_at, completed_at)
select 't_retention', 'completed', 'ret-old-' || n, now() - interval '8 days',
       now() - interval '8 days' + n * interval '1 second'
from generate_series(1, 5) n;
insert into public.job_queue (job_type, status, idempotency_key, started_at, completed_at)
values ('t_retention', 'completed', 'ret-recent', now() - interval '1 hour', now() - interval '1 hour');
insert into public.job_queue (job_type, status, idempotency_key, next_retry_at)
values ('t_retention', 'pending', 'ret-old-pending', now() - interval '30 days');
insert into public.job_queue (job_type, status, idempotency_key, dead_lettered_at)
values ('t_retention', 'dead_letter', 'ret-old-dead', now() - interval '30 days');

set role service_role;
call public.purge_completed_jobs('7 days', 2);
reset role;

select is((select count(*)::int from public.job_queue
           where job_type = 't_retention' and idempotency_key like 'ret-old-_'), 0,
          'completed jobs older than the limit are deleted, across several batches');
select is((select count(*)::int from public.job_queue where idempotency_key = 'ret-recent'), 1,
          'recent completed jobs are kept');
select is((select count(*)::int from public.job_queue where idempotency_key = 'ret-old-pending'),
          1, 'pending jobs are never purged');
select is((select count(*)::int from public.job_queue where idempotency_key = 'ret-old-dead'),
          1, 'dead-letter jobs are never purged by retention');

delete from public.job_queue where job_type = 't_retention';
select * from finish();
