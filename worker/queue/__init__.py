"""The generic job runner: claim, lease, budget, settle; one registered handler per job type.

`runner` drives a run, `handlers` is the registry a handler is added to, `outcome` says what a
handler's result or error means for the queue, `breakers` guards calls to outside services and
`trace` collects a job's events and timings. None of it knows what a job does.
"""
