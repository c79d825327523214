"""Looking at what was trained: frozen probes of any encoder (`probe`, `salt probe`) and a stage-1
teacher's reconstructions (`reconstruction`, `salt reconstruct`)."""
