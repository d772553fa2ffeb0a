from drtool.config.loader import Settings, find_config, load_settings
from drtool.config.models import Config, Playbook, Policy, Repository, Source

__all__ = ["Config", "Playbook", "Policy", "Repository", "Settings", "Source", "find_config", "load_settings"]
