"""pyanaconda.core.kickstart: VERSION and KickstartSpecification."""
from pyanaconda.core.kickstart.specification import KickstartSpecification
from pyanaconda.core.kickstart.version import VERSION

__all__ = ["VERSION", "KickstartSpecification"]
