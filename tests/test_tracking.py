from mlflow.tracking import MlflowClient

from sskd_ray import tracking


def test_parent_and_child_runs_in_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri("", tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    with tracking.start_run(uri, "exp", "pipeline", tags={"sskd.run_dir": str(tmp_path)},
                            run_dir=tmp_path) as parent:
        tracking.log_params(uri, parent, {"loss.temperature": 0.1, "a.b": "x" * 10000})
        with tracking.start_run(uri, "exp", "distill", parent_id=parent) as child:
            tracking.log_metrics(uri, child, {"mask_AP": 12.5, "flag": True}, step=3)
            (tmp_path / "report.md").write_text("# hi")
            tracking.log_artifacts(uri, child, [tmp_path / "report.md"])
    client = MlflowClient(uri)
    assert client.get_run(parent).data.params["loss.temperature"] == "0.1"
    assert len(client.get_run(parent).data.params["a.b"]) == tracking.MAX_PARAM_LENGTH
    child_run = client.get_run(child)
    assert child_run.data.tags["mlflow.parentRunId"] == parent
    assert child_run.data.metrics == {"mask_AP": 12.5}
    assert [a.path for a in client.list_artifacts(child)] == ["report.md"]
    assert tracking.find_run(uri, "exp", {"sskd.run_dir": str(tmp_path)}) == parent
    assert tracking.find_run(uri, "exp", {"sskd.run_dir": "elsewhere"}) is None


def test_logging_to_one_run_dir_does_not_redirect_the_next(tmp_path, monkeypatch):
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI; a second run dir must still get its own db."""
    from sskd_ray import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first = tracking.resolve_tracking_uri("", tmp_path / "a")
    with tracking.start_run(first, "exp", "one", run_dir=tmp_path / "a"):
        pass
    assert tracking.resolve_tracking_uri("", tmp_path / "b") == f"sqlite:///{(tmp_path / 'b').resolve() / 'mlflow.db'}"
