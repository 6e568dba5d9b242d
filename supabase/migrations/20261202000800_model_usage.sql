-- Model usage (issue 15): what the model calls of the last hours cost in tokens, per model, from
-- the process.model_usage events the pipeline writes once per email (worker/pipeline/steps.py:
-- calls, input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens).
-- Read by /metrics at scrape time; the events' BRIN index on created_at keeps the window cheap.
-- Prices are not here: they are Python's (worker/model_cost.py), applied to these sums.

create or replace function public.model_usage_stats(p_hours int default 1)
returns jsonb
language sql
stable
set search_path = ''
as $$
    select coalesce(jsonb_agg(jsonb_build_object(
               'model', u.model, 'emails', u.emails, 'calls', u.calls,
               'input_tokens', u.input_tokens, 'output_tokens', u.output_tokens,
               'cache_creation_input_tokens', u.cache_creation_input_tokens,
               'cache_read_input_tokens', u.cache_read_input_tokens)
             order by u.model), '[]'::jsonb)
    from (
        select coalesce(e.detail ->> 'model', 'unknown') as model,
               count(*) as emails,
               sum(coalesce((e.detail ->> 'calls')::bigint, 0)) as calls,
               sum(coalesce((e.detail ->> 'input_tokens')::bigint, 0)) as input_tokens,
               sum(coalesce((e.detail ->> 'output_tokens')::bigint, 0)) as output_tokens,
               sum(coalesce((e.detail ->> 'cache_creation_input_tokens')::bigint, 0))
                 as cache_creation_input_tokens,
               sum(coalesce((e.detail ->> 'cache_read_input_tokens')::bigint, 0))
                 as cache_read_input_tokens
        from public.events e
        where e.event_type = 'process.model_usage'
          and e.created_at >= now() - make_interval(
                hours => least(greatest(coalesce(p_hours, 1), 1), 24 * 31))
        group by 1
    ) u;
$$;

revoke all on function public.model_usage_stats(int) from public, anon, authenticated;
grant execute on function public.model_usage_stats(int) to service_role;
