-- model_usage_stats (issue 15): tokens of the last hours per model, from process.model_usage
-- events; older events, other event types and people without the service role are left out.
begin;
select plan(5);

-- Only this test's events (rolled back at the end), whatever earlier test runs left behind.
delete from public.events where event_type = 'process.model_usage';

insert into public.events (event_type, detail, created_at) values
  ('process.model_usage', '{"model": "claude-haiku-4-5", "calls": 1, "input_tokens": 1700,
    "output_tokens": 180, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}',
   now() - interval '10 minutes'),
  ('process.model_usage', '{"model": "claude-haiku-4-5", "calls": 2, "input_tokens": 300,
    "output_tokens": 150, "cache_creation_input_tokens": 4200, "cache_read_input_tokens": 0}',
   now() - interval '20 minutes'),
  ('process.model_usage', '{"model": "offline-responder", "calls": 0, "input_tokens": 0,
    "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}',
   now() - interval '5 minutes'),
  -- Outside a one-hour window, and another event type: neither counts.
  ('process.model_usage', '{"model": "claude-haiku-4-5", "calls": 1, "input_tokens": 999999,
    "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}',
   now() - interval '3 hours'),
  ('process.classified', '{"model": "claude-haiku-4-5", "input_tokens": 777777}', now());

select is(
  public.model_usage_stats(1),
  '[{"model": "claude-haiku-4-5", "emails": 2, "calls": 3, "input_tokens": 2000,
     "output_tokens": 330, "cache_creation_input_tokens": 4200, "cache_read_input_tokens": 0},
    {"model": "offline-responder", "emails": 1, "calls": 0, "input_tokens": 0,
     "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}]'::jsonb,
  'one hour: sums per model of the process.model_usage events only');
select is(
  (public.model_usage_stats(6) -> 0 ->> 'input_tokens')::bigint, 1001999::bigint,
  'a longer window takes the older email in');
select is(
  (public.model_usage_stats(null) -> 0 ->> 'emails')::int, 2,
  'no window given: the last hour');

set local role authenticated;
select throws_ok($$select public.model_usage_stats(1)$$, '42501', null,
                 'signed-in people cannot read usage across stores');
reset role;
set local role anon;
select throws_ok($$select public.model_usage_stats(1)$$, '42501', null, 'nor can anonymous callers');
reset role;

select * from finish();
rollback;
