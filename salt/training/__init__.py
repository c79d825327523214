"""Training: stage 1 (the teacher) and process 2 (students from a latent cache) run through one
loop; what differs is the objective and where the batches come from.

    teacher.py         stage 1: `salt train-teacher` — pixels under V-JEPA masks, or labels (supervised)
    student.py         process 2: `salt train-student` — a student streams a latent cache (never the teacher)
    loop.py            the one loop: a `Stage` in, fetch → forward → backward → step → log → agree → checkpoint
    engine.py          the process group, the DeepSpeed engine over an objective, ranks agreeing to stop
    run_folder.py      run.out_dir: the lock, config.yaml, status.json, checks of a resume, checkpoints
    objectives.py      what each stage trains: model parts, targets, loss, trivial baseline, hooks
    data.py            micro-batches in one global order: clips decoded online (stage 1) or a cache (process 2)
    checkpointing.py   commit a checkpoint that survives a kill or a full disk, resume (on other ranks), export
    metrics.py         FLOPs once, windows of step statistics, metrics.jsonl and the bar, the bad-video limit
    config.py          TeacherConfig and StudentConfig, with their checks
    schedules.py       lr / wd / EMA-momentum schedules as small objects
    errors.py          TrainingError

Process 2 never imports process 1 (salt/cache_latents/): the two meet only in salt/latents/.
"""
