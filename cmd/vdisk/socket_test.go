package main

import (
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// staleSocket leaves a socket file at path that nobody listens on.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
}

// A server whose backlog is full answers a connect with EAGAIN, not
// ECONNREFUSED: it is alive, and its socket must not be taken over.
func TestListenUnixFullBacklog(t *testing.T) {
	path := t.TempDir() + "/s.sock"
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	// Fill the backlog with connections nobody accepts.
	full := false
	for range 16 {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			if !errors.Is(err, syscall.EAGAIN) {
				t.Fatalf("filling the backlog: %v", err)
			}
			full = true
			break
		}
		defer c.Close()
	}
	if !full {
		t.Fatal("the backlog never filled")
	}
	l, remove, err := listenUnix(path)
	if err == nil {
		l.Close()
		remove()
		t.Fatal("listenUnix took over the socket of a live server with a full backlog")
	}
	if !strings.Contains(err.Error(), "address in use") || !strings.Contains(err.Error(), path) {
		t.Errorf("unclear error: %v", err)
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("the live server's socket is gone: %v", err)
	}
	if _, err := os.Stat(path + ".lock"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file left behind: %v", err)
	}
}

// Two servers starting on one stale socket at once: exactly one listens,
// the other fails saying why, and the socket on the path is the
// listener's. Without the lock, one could remove the socket the other had
// just made and both would "listen", one on a socket nobody can reach.
func TestListenUnixConcurrent(t *testing.T) {
	dir := t.TempDir()
	for round := range 300 {
		path := dir + "/s.sock"
		staleSocket(t, path)
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			ls    [2]net.Listener
			rms   [2]func()
			errs  [2]error
		)
		for i := range ls {
			wg.Go(func() {
				<-start
				ls[i], rms[i], errs[i] = listenUnix(path)
			})
		}
		close(start)
		wg.Wait()
		var won []int
		for i, err := range errs {
			if err == nil {
				won = append(won, i)
			} else if !strings.Contains(err.Error(), "another server is listening") && !strings.Contains(err.Error(), "address already in use") {
				t.Errorf("round %d: unclear error: %v", round, err)
			}
		}
		if len(won) != 1 {
			for _, i := range won {
				ls[i].Close()
				rms[i]()
			}
			t.Fatalf("round %d: %d servers listen (errors %v)", round, len(won), errs)
		}
		w := won[0]
		accepted := make(chan error, 1)
		go func() {
			c, err := ls[w].Accept()
			if err == nil {
				c.Close()
			}
			accepted <- err
		}()
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			t.Fatalf("round %d: dialing the winner: %v", round, err)
		}
		c.Close()
		if err := <-accepted; err != nil {
			t.Fatalf("round %d: accept: %v", round, err)
		}
		ls[w].Close()
		rms[w]()
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("round %d: socket left behind after remove: %v", round, err)
		}
	}
}

// remove leaves alone a socket that is no longer the server's own.
func TestListenUnixRemoveOnlyOwn(t *testing.T) {
	path := t.TempDir() + "/s.sock"
	l, remove, err := listenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	// Another socket replaces it (made first, so its inode differs).
	other := path + ".other"
	staleSocket(t, other)
	if err := os.Rename(other, path); err != nil {
		t.Fatal(err)
	}
	remove()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("remove deleted another server's socket: %v", err)
	}
}
