"""SO_REUSEPORT groups and the ``port`` accept-balancing mode (client port % workers).

The master binds one socket per worker on the same address, in worker order, and attaches
a classic BPF program that picks the group member by the client's source port, so worker
``i`` serves exactly the clients whose port is ``i`` modulo the number of workers (Seastar's
``port`` balancing). Without the program the kernel spreads by a 4-tuple hash (``kernel``).

Kernel facts this relies on (Linux 4.5+, checked by tests/unit/test_reuseport.py):

- A socket's index in the group is the order it joined: ``listen()`` for TCP, ``bind()``
  for UDP. Closing a member moves the *last* member into its slot, so every member must
  stay open for the life of the group (the master keeps its copies; a worker closing its
  inherited copies of the others does not remove them).
- When the program runs, the packet data starts *after* the transport header (the TCP/UDP
  payload; a SYN has none), so the source port is read relative to the network header
  with the ``SKF_NET_OFF`` special offset: IPv4 at ``4 * IHL``, IPv6 at 40 (extension
  headers between the IPv6 and TCP/UDP headers make it read another halfword: still a
  valid, stable index, just not the port).
- An index outside the group makes the kernel fall back to its hash.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import os
import socket
import struct

from .addr import Address
from .listener import bind_socket

__all__ = [
    "SO_ATTACH_REUSEPORT_CBPF",
    "SO_DETACH_REUSEPORT_BPF",
    "SteeringError",
    "attach_port_steering",
    "bind_reuseport_group",
    "detach_steering",
    "port_steering_program",
]

SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_B_ABS = 0x30  # A = pkt[k] (byte)
_LD_H_ABS = 0x28  # A = pkt[k:k+2] (halfword, network order)
_LD_H_IND = 0x48  # A = pkt[X+k:X+k+2]
_LDX_B_MSH = 0xB1  # X = 4 * (pkt[k] & 0xf)
_ALU_RSH_K = 0x74  # A >>= k
_ALU_MOD_K = 0x94  # A %= k (Linux 3.7+; every kernel with SO_ATTACH_REUSEPORT_CBPF has it)
_JMP_JEQ_K = 0x15  # pc += (A == k) ? jt : jf
_JMP_JA = 0x05  # pc += k
_RET_A = 0x16  # return A
_SKF_NET_OFF = -0x100000  # loads relative to the network (IP) header
_MAX_GROUP = 65535


class SteeringError(OSError):
    """The kernel refused the steering program; the message says which socket and why."""


def bind_reuseport_group(
    address: Address, n: int, *, backlog: int = 2048, udp: bool = False
) -> list[socket.socket]:
    """Bind ``n`` SO_REUSEPORT sockets on ``address``, index ``i`` = group index ``i``.

    Port 0 binds the first socket to an ephemeral port and the others to the same port.
    Raises :class:`~ferryman.net.listener.BindError` (nothing stays open on failure).
    """
    if address.is_unix:
        raise ValueError(f"{address}: SO_REUSEPORT groups need an IP address, not a Unix socket")
    if not 1 <= n <= _MAX_GROUP:
        raise ValueError(f"a reuseport group has 1 to {_MAX_GROUP} sockets, not {n}")
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            # bind_socket binds then listens, so each socket joins the group in index order
            sock = bind_socket(address, udp=udp, backlog=backlog, reuse_port=True)
            socks.append(sock)
            if address.port == 0:
                address = dataclasses.replace(address, port=sock.getsockname()[1])
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def port_steering_program(n: int) -> list[tuple[int, int, int, int]]:
    """The cBPF program ``return source_port % n`` as ``(code, jt, jf, k)`` instructions."""
    if not 1 <= n <= _MAX_GROUP:
        raise ValueError(f"a reuseport group has 1 to {_MAX_GROUP} sockets, not {n}")
    net = _SKF_NET_OFF & 0xFFFFFFFF
    return [
        (_LD_B_ABS, 0, 0, net),  # 0: A = first byte of the IP header
        (_ALU_RSH_K, 0, 0, 4),  # 1: A = IP version
        (_JMP_JEQ_K, 0, 2, 6),  # 2: IPv6 → 3, else → 5
        (_LD_H_ABS, 0, 0, net + 40),  # 3: A = source port after the fixed IPv6 header
        (_JMP_JA, 0, 0, 2),  # 4: → 7
        (_LDX_B_MSH, 0, 0, net),  # 5: X = IPv4 header length
        (_LD_H_IND, 0, 0, net),  # 6: A = source port after the IPv4 header
        (_ALU_MOD_K, 0, 0, n),  # 7: A = port % n
        (_RET_A, 0, 0, 0),  # 8: group index
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc: ctypes.CDLL | None = None


def _attach_filter(fd: int, prog: _SockFprog) -> None:
    """setsockopt(2) with a pointer argument (socket.setsockopt cannot pass one)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.setsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32]
        _libc.setsockopt.restype = ctypes.c_int
    if _libc.setsockopt(fd, socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, ctypes.byref(prog), ctypes.sizeof(prog)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def attach_port_steering(sock: socket.socket, n: int) -> None:
    """Steer the reuseport group of ``sock`` by ``client_source_port % n`` (TCP and UDP).

    Attach once, to any member, after the whole group is bound (and, for TCP, listening);
    the program belongs to the group. Raises :class:`SteeringError` if the kernel refuses.
    """
    code = b"".join(struct.pack("=HBBI", *insn) for insn in port_steering_program(n))
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _SockFprog(len(code) // 8, ctypes.addressof(buf))
    try:
        _attach_filter(sock.fileno(), prog)
    except OSError as exc:
        raise SteeringError(exc.errno, f"cannot attach the port-steering program to {_name(sock)}: {_why(exc)}") from exc


def detach_steering(sock: socket.socket) -> None:
    """Remove the group's steering program: back to the kernel's hash (``kernel`` mode)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
    except OSError as exc:
        raise SteeringError(exc.errno, f"cannot detach the steering program from {_name(sock)}: {_why(exc)}") from exc


def _name(sock: socket.socket) -> str:
    try:
        name = sock.getsockname()
    except OSError:
        return f"fd {sock.fileno()}"
    if isinstance(name, tuple):
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(name)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOPROTOOPT:
        return "this kernel has no SO_ATTACH_REUSEPORT_CBPF (Linux 4.5+ needed)"
    if exc.errno == errno.EINVAL:
        return "the socket is not in an SO_REUSEPORT group (or the program was rejected)"
    if exc.errno == errno.ENOENT:
        return "no steering program is attached"
    return exc.strerror or str(exc)
