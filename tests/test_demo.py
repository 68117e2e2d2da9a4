from torch.utils.tensorboard import SummaryWriter

from lit_rlhf.demo import plot_ppo, scalar_curve


def test_ppo_plot_from_the_run_events(tmp_path):
    run_dir = tmp_path / "ppo"
    writer = SummaryWriter(str(run_dir))
    for step, (gold, reward) in enumerate([(0.83, 0.50), (0.84, 0.52)]):
        writer.add_scalar("val/exact_match", gold, global_step=19 + 20 * step)
        writer.add_scalar("val/reward", reward, global_step=19 + 20 * step)
    writer.close()
    assert scalar_curve(str(run_dir), "val/exact_match") == [(19, 0.8299999833106995), (39, 0.8399999737739563)]
    path = tmp_path / "curves.png"
    assert plot_ppo(str(run_dir), {"exact_match": 0.82, "reward": 0.49}, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_ppo(str(tmp_path / "no_run"), {}, str(tmp_path / "none.png"))  # nothing to plot: no file
    assert not (tmp_path / "none.png").exists()
