package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// listenUnix listens on a Unix socket. A socket file left behind by a
// server that died is replaced, as qemu-nbd does; unlike qemu-nbd, one
// that a live server may still use is not taken over, and a file of
// another kind is never removed. Only a refused connection shows that
// nobody listens: a full backlog (EAGAIN), a timeout or EACCES may well
// come from a live server.
//
// Servers starting or stopping on one path at once are serialised by
// lockSocketPath, so none removes a socket another has just made. The
// returned remove deletes the socket when the server stops, unless it is
// no longer this server's.
func listenUnix(path string) (l net.Listener, remove func(), err error) {
	unlock, err := lockSocketPath(path)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		switch {
		case err == nil:
			c.Close()
			return nil, nil, fmt.Errorf("%s: another server is listening on this socket", path)
		case !errors.Is(err, syscall.ECONNREFUSED):
			return nil, nil, fmt.Errorf("%s: address in use: cannot tell whether a server listens on it (%w); remove it if none does", path, err)
		}
		if err := os.Remove(path); err != nil {
			return nil, nil, fmt.Errorf("removing stale socket: %w", err)
		}
	}
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, nil, err
	}
	// The socket is removed by remove, which checks that it is still ours.
	ul.SetUnlinkOnClose(false)
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		ul.Close()
		return nil, nil, err
	}
	remove = func() {
		unlock, err := lockSocketPath(path)
		if err != nil {
			return
		}
		defer unlock()
		var now unix.Stat_t
		if unix.Lstat(path, &now) == nil && now.Dev == st.Dev && now.Ino == st.Ino {
			os.Remove(path)
		}
	}
	return ul, remove, nil
}

// lockSocketPath takes an exclusive flock on PATH.lock. The lock file is
// removed before the lock is released, so none is left behind; a waiter
// that then holds a lock on a removed (or since replaced) file tries
// again.
func lockSocketPath(path string) (unlock func(), err error) {
	name := path + ".lock"
	for {
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return nil, fmt.Errorf("locking the socket path: %w", err)
		}
		fd := int(f.Fd())
		for {
			err = unix.Flock(fd, unix.LOCK_EX)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("locking the socket path: %s: %w", name, err)
		}
		var held, now unix.Stat_t
		if unix.Fstat(fd, &held) == nil && unix.Lstat(name, &now) == nil && held.Dev == now.Dev && held.Ino == now.Ino {
			return func() {
				os.Remove(name)
				f.Close()
			}, nil
		}
		f.Close()
	}
}
