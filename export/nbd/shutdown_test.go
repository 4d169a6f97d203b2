package nbd

import (
	"bytes"
	"net"
	"testing"
	"time"

	"vdisk/nbd"
)

// TestShutdownSoftDisconnect: a server shutting down answers requests that
// arrive afterwards with NBD_ESHUTDOWN (a write among them changes
// nothing), keeps the connection until the client sends DISC, and then
// returns at once rather than after the grace period.
func TestShutdownSoftDisconnect(t *testing.T) {
	srv, addr, img := testServer(t, 1<<20, func(s *Server) { s.ShutdownGrace = 5 * time.Second })
	for _, structured := range []bool{false, true} {
		cl := dial(t, addr)
		cl.goTo("", structured)
		cl.req(nbd.CmdWrite, 0, 1, 0, 4096, bytes.Repeat([]byte{1}, 4096))
		if e := replyErr(cl.reply(0)); e != 0 {
			t.Fatalf("write before shutdown: error %d", e)
		}
		if !structured {
			cl.req(nbd.CmdDisc, 0, 2, 0, 0, nil)
			cl.expectClosed()
			continue
		}
		down := make(chan time.Duration, 1)
		start := time.Now()
		go func() { srv.Shutdown(); down <- time.Since(start) }()
		waitListenerClosed(t, addr)
		cl.req(nbd.CmdWrite, 0, 2, 0, 4096, bytes.Repeat([]byte{2}, 4096))
		if e := replyErr(cl.reply(0)); e != nbd.ESHUTDOWN {
			t.Fatalf("write during shutdown: error %d, want ESHUTDOWN", e)
		}
		cl.req(nbd.CmdRead, 0, 3, 0, 4096, nil)
		if e := replyErr(cl.reply(4096)); e != nbd.ESHUTDOWN {
			t.Fatalf("read during shutdown: error %d, want ESHUTDOWN", e)
		}
		b := make([]byte, 4096)
		img.ReadAt(b, 0)
		if !bytes.Equal(b, bytes.Repeat([]byte{1}, 4096)) {
			t.Fatal("a write refused with ESHUTDOWN reached the image")
		}
		cl.req(nbd.CmdDisc, 0, 4, 0, 0, nil)
		select {
		case d := <-down:
			if d >= 5*time.Second {
				t.Fatalf("Shutdown took %v after the client disconnected", d)
			}
		case <-time.After(4 * time.Second):
			t.Fatal("Shutdown still waiting after the client sent DISC")
		}
	}
}

// TestShutdownGraceExpires: a client that never disconnects is cut off
// when the grace period ends.
func TestShutdownGraceExpires(t *testing.T) {
	srv, addr, _ := testServer(t, 1<<20, func(s *Server) { s.ShutdownGrace = 200 * time.Millisecond })
	cl := dial(t, addr)
	cl.goTo("", true)
	done := make(chan struct{})
	go func() { srv.Shutdown(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not end an idle client's connection after its grace period")
	}
	cl.expectClosed()
}

// waitListenerClosed returns once addr refuses connections: Shutdown has
// begun.
func waitListenerClosed(t *testing.T, addr string) {
	t.Helper()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return
		}
		c.Close()
		if i > 200 {
			t.Fatal("listener still open")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// opt is an option and its data.
type opt struct {
	opt  uint32
	data []byte
}

// expectOptErr sends each option and expects it refused with want.
func (cl *client) expectOptErr(want uint32, opts ...opt) {
	cl.t.Helper()
	for _, o := range opts {
		cl.opt(o.opt, o.data)
		if h, _ := cl.optReply(); h.Type != want || h.Option != o.opt {
			cl.t.Fatalf("option %d: reply %#x for option %d, want %#x", o.opt, h.Type, h.Option, want)
		}
	}
}
