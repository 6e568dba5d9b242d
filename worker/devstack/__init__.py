"""The local stand-ins of the outside world, for tests, the demo and benchmarks; never used in
production.

Real servers on loopback (Dovecot, an aiosmtpd SMTP sink), HTTP fakes of the Anthropic and
Shopify APIs, a PostgREST-compatible RPC gateway, a Supabase Auth (GoTrue) stand-in and a
throwaway CA. The container image and the
wheel leave this package out; the editable install (`pip install -e '.[dev]'`) has it, and its
modules may import the dev extra's dependencies (aiosmtpd, pyjwt).
"""
