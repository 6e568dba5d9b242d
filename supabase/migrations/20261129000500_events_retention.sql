-- The audit trail is append-only, but not forever: without a bound, `events` grows with every
-- job (two rows per job from the queue alone) and its indexes slow every write on the claim
-- path. Events older than the retention age are deleted in small committed batches, except
-- those of jobs an operator may still need to read: anything not completed (the dead-letter
-- queue's error history, pending retries).
create or replace procedure public.purge_old_events(
    p_older_than interval default '180 days',
    p_batch_size int default 10000
)
language plpgsql
as $$
declare
    v_deleted int;
begin
    if p_older_than is null or p_older_than < interval '1 day' then
        raise exception 'purge_old_events: keep at least one day of events, not %', p_older_than
            using errcode = 'invalid_parameter_value';
    end if;
    loop
        delete from public.events e
        where e.id in (
            select o.id from public.events o
            where o.created_at < pg_catalog.now() - p_older_than
              and not exists (
                  select 1 from public.job_queue q
                  where q.id = o.job_id and q.status <> 'completed'
              )
            order by o.created_at
            limit p_batch_size
        );
        get diagnostics v_deleted = row_count;
        commit;
        exit when v_deleted < p_batch_size;
    end loop;
end;
$$;

-- Only the owner deletes audit events (pg_cron runs this as the owner); a procedure that
-- commits cannot be security definer, so no API role gets it.
revoke all on procedure public.purge_old_events(interval, int)
  from public, anon, authenticated, service_role;

select cron.schedule('events-retention', '37 3 * * *', $$call public.purge_old_events()$$);
