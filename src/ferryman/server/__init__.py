from .server import BackgroundService, Server, Service, install_uvloop

__all__ = ["BackgroundService", "Server", "Service", "install_uvloop"]
