"""Runtime: Ray and DeepSpeed plumbing shared by every trainer — process groups, placement, actor groups,
the learner → generator weight push, run directories, pre-flight checks and `fgrlhf plan`."""
