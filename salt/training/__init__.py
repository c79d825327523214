"""Training: stage 1 (the teacher) and process 2 (students from a latent cache) run through one
loop; what differs is the objective and where the batches come from.

    teacher.py         stage 1: `salt train-teacher` — pixels under V-JEPA masks, or labels (supervised)
    student.py         process 2: `salt train-student` — a student streams a latent cache (never the teacher)
    loop.py            the one loop: DeepSpeed engine, schedules, fetch → forward → backward → step → log
    objectives.py      what each stage trains: model parts, targets, loss, trivial baseline, hooks
    data.py            micro-batches: clips decoded online (stage 1) or read from a cache (process 2)
    checkpointing.py   commit a checkpoint that survives a kill, resume, export the encoder
    metrics.py         FLOPs once, windows of step statistics, metrics.jsonl
    config.py          TeacherConfig and StudentConfig, with their checks
    schedules.py       lr / wd / EMA-momentum schedules as small objects
    errors.py          TrainingError

Process 2 never imports process 1 (salt/cache_latents/): the two meet only in salt/latents/.
"""
