"""How a run's processes are started and stopped: local subprocesses (`local.py`), Ray actors
(`ray_actors.py`) or docker compose services (`compose.py`), all driven by one supervisor loop
(`supervisor.py`) that follows the run's events stream (scale requests) and writes what it runs
to `runs/<run_id>/processes.json` for `streamrl ps`/`down`."""

from streamrl.launch.base import Launcher, LaunchError, Member

__all__ = ["LaunchError", "Launcher", "Member"]
