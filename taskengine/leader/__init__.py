"""What runs on the leader only: the election and the maintenance services.

``election`` (one leader per election name, terms fenced on the database clock),
``ticker`` (the services and the thread that runs them while this process leads and the
migration gate is open), and the services: ``recovery`` (expired leases), ``dead_workers``,
``schedule_enqueuer`` (one job per due schedule slot) and ``retention`` (the only place
that deletes jobs). Nothing here imports the worker's runtime.
"""
