package ctl

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"syscall"
	"testing"
)

func TestStateDir(t *testing.T) {
	t.Setenv("VDISK_STATE_DIR", "")
	if got := StateDir(""); got != DefaultStateDir {
		t.Errorf("StateDir() = %q, want %q", got, DefaultStateDir)
	}
	t.Setenv("VDISK_STATE_DIR", "/tmp/x")
	if got := StateDir(""); got != "/tmp/x" {
		t.Errorf("StateDir() with env = %q", got)
	}
	if got := StateDir("/flag"); got != "/flag" {
		t.Errorf("StateDir(flag) = %q", got)
	}
}

func TestErrno(t *testing.T) {
	for _, e := range []syscall.Errno{syscall.EBUSY, syscall.ENXIO, syscall.EROFS, syscall.EINVAL} {
		if got := errnos[ErrnoName(e)]; got != e {
			t.Errorf("round trip of %v gave %v", e, got)
		}
	}
	err := error(&Error{Errno: syscall.EBUSY, Msg: "vd0: busy"})
	if !errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.ENXIO) {
		t.Errorf("errors.Is on %v is wrong", err)
	}
	if err.Error() != "vd0: busy (EBUSY)" {
		t.Errorf("message %q", err.Error())
	}
	if ErrnoOf(errors.New("plain")) != syscall.EIO {
		t.Error("an error without errno must travel as EIO")
	}
}

// fakeDaemon answers each request with the response reply makes.
func fakeDaemon(t *testing.T, reply func(Request) Response) string {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, SocketName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			var req Request
			line, _ := bufio.NewReader(c).ReadBytes('\n')
			if err := json.Unmarshal(line, &req); err != nil {
				t.Errorf("daemon got malformed request %q: %v", line, err)
			}
			b, _ := json.Marshal(reply(req))
			c.Write(append(b, '\n'))
			c.Close()
		}
	}()
	return dir
}

func TestClient(t *testing.T) {
	var got []Request
	dir := fakeDaemon(t, func(r Request) Response {
		got = append(got, r)
		switch r.Op {
		case OpAttach:
			return Response{Version: 1, OK: true, Unit: &UnitInfo{Unit: "vd2", Device: "/dev/loop9", File: r.Attach.File}}
		case OpDetach:
			return Response{Version: 1, Errno: "ENXIO", Error: r.Unit + ": no such unit attached"}
		case OpList:
			return Response{Version: 1, OK: true}
		}
		return Response{Version: 1, Errno: "EINVAL", Error: "bad op"}
	})
	c := NewClient(dir)
	u, err := c.Attach(AttachArgs{File: "rel.img", Dir: "/w", SecBits: 12})
	if err != nil || u.Unit != "vd2" || u.File != "rel.img" {
		t.Fatalf("Attach = %+v, %v", u, err)
	}
	if len(got) != 1 || got[0].Version != Version || got[0].Attach.SecBits != 12 || got[0].Attach.Dir != "/w" {
		t.Fatalf("request sent: %+v", got)
	}
	if _, err := c.Detach("vd5", true); !errors.Is(err, syscall.ENXIO) {
		t.Errorf("Detach error = %v, want ENXIO", err)
	}
	if units, err := c.List(); err != nil || units == nil || len(units) != 0 {
		t.Errorf("List = %#v, %v; want an empty, non-nil list", units, err)
	}
	if !got[1].Force || got[1].Unit != "vd5" {
		t.Errorf("detach request %+v", got[1])
	}
}

func TestNoDaemon(t *testing.T) {
	err := NewClient(t.TempDir()).Ping()
	if !errors.Is(err, ErrNoDaemon) {
		t.Errorf("Ping without daemon = %v", err)
	}
}
