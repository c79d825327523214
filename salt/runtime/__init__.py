"""Process plumbing every stage shares, in both processes: stopping on a scheduler's signal
(`preemption`) and one live holder of a folder (`locks`). Imports nothing else from `salt`,
so process 1, process 2 and stage 1 may all use it without importing each other.
"""
