"""A TCP proxy in front of etcd that a test can freeze, cut or block.

Real connections, real etcd: the proxy only forwards bytes. ``freeze()``
stops forwarding on every open connection while keeping them open (a stream
that went silent, as behind a dead NAT entry); ``stall()`` does that to new
connections too (a member that accepts and never answers) until ``thaw()``;
``cut()`` closes them all; ``block()`` makes new connections fail until
``unblock()``.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._listener = socket.create_server((host, 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._frozen: set[int] = set()  # ids of connections frozen
        self._live: list[tuple[socket.socket, socket.socket]] = []
        self._blocked = False
        self._stalled = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"{self.target[0]}:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._blocked:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            with self._lock:  # checked again under the lock: block() may have run since
                if self._blocked:
                    client.close()
                    upstream.close()
                    continue
                self._live.append(pair)
                if self._stalled:
                    self._frozen.add(id(pair))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket], src: socket.socket,
              dst: socket.socket) -> None:  # fmt: skip
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while id(pair) in self._frozen and not self._closed:
                    threading.Event().wait(0.05)  # hold the bytes: the connection went silent
                if id(pair) in self._frozen:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(pair)

    def _drop(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            if pair in self._live:
                self._live.remove(pair)
        self._frozen.discard(id(pair))
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def freeze(self) -> None:
        """Stop forwarding on every open connection, leaving them open."""
        with self._lock:
            self._frozen |= {id(pair) for pair in self._live}

    def stall(self) -> None:
        """Freeze every connection, open or new: nothing sent through gets an answer."""
        with self._lock:
            self._stalled = True
            self._frozen |= {id(pair) for pair in self._live}

    def thaw(self) -> None:
        """Forward again on every connection (what was held goes through)."""
        with self._lock:
            self._stalled = False
            self._frozen.clear()

    def cut(self) -> None:
        """Close every open connection."""
        with self._lock:
            pairs = list(self._live)
        for pair in pairs:
            self._drop(pair)

    def block(self) -> None:
        with self._lock:  # a connection being accepted is either cut below or refused
            self._blocked = True
        self.cut()

    def unblock(self) -> None:
        self._blocked = False

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut()
