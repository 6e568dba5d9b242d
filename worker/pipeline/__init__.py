"""The process_email job: answer one customer email exactly once.

`context` holds what a job carries from step to step, `steps` the named steps in order,
`delivery` the exactly-once send, and `handler` the queue handler that runs them.
"""
