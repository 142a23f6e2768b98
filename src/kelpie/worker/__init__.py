"""The kelpie worker: the agent in the user's container that carries jobs to completion.

`main.py` polls and handles signals, `job.py` carries one attempt, `plan.py` decides what
moves where, `runner.py` owns the job's process and `proctree.py` every process it starts,
`sync.py` uploads while it runs, `heartbeat.py` keeps the lease, `node.py` talks to the
SaladCloud IMDS through `imds.py`.
"""
