"""The support console (issue 11): sign-in with Supabase Auth, a JSON API under /api/ and the
pages over it. Every read and write for a person runs as that person (worker.db's as_person),
so the SQL decides what they see; see docs/api.md.
"""
