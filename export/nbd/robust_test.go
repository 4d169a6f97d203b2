package nbd

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"vdisk/format/mem"
	"vdisk/nbd"
)

// greeting connects to addr and reports whether the server's greeting
// arrives within d.
func greeting(addr string, d time.Duration) (net.Conn, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(d))
	var hello [18]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil {
		c.Close()
		return nil, err
	}
	c.SetReadDeadline(time.Time{})
	if be.Uint64(hello[:]) != nbd.Magic {
		c.Close()
		return nil, fmt.Errorf("bad greeting % x", hello)
	}
	return c, nil
}

// flood sends n 1 MiB reads without reading a single reply: the replies
// (n MiB) fill the socket buffers both ends, so the server's writers
// block.
func (cl *client) flood(n int) {
	cl.t.Helper()
	for i := 0; i < n; i++ {
		cl.req(nbd.CmdRead, 0, uint64(i), uint64(i)<<20, 1<<20, nil)
	}
}

// A client that breaks the protocol while its replies are still being
// written (it never reads them) loses its connection at once: it does not
// keep holding the only slot of a --shared 1 server.
func TestProtocolErrorWithRepliesPendingFreesSlot(t *testing.T) {
	_, addr, _ := testServer(t, 32<<20, func(s *Server) { s.MaxConns = 1 })
	bad := dial(t, addr)
	bad.goTo("", false)
	bad.flood(30)
	bad.write(make([]byte, nbd.RequestSize)) // bad request magic
	c, err := greeting(addr, 10*time.Second)
	if err != nil {
		t.Fatalf("the next client is not served while the bad one's replies are stuck: %v", err)
	}
	defer c.Close()
	next := &client{t: t, c: c}
	next.goTo("", false)
	next.req(nbd.CmdFlush, 0, 1, 0, 0, nil)
	if e, _ := next.simple(); e != 0 {
		t.Fatalf("flush: error %d", e)
	}
}

// acceptFails is a listener whose first accepts fail as they do when the
// process runs out of file descriptors.
type acceptFails struct {
	net.Listener
	left atomic.Int32
}

func (l *acceptFails) Accept() (net.Conn, error) {
	if l.left.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.Addr(), Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return l.Listener.Accept()
}

// Running out of file descriptors does not stop the server: it backs off
// and accepts again.
func TestAcceptEMFILEBacksOff(t *testing.T) {
	srv := &Server{Exports: []*Export{{Image: mem.New(1 << 20)}}}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &acceptFails{Listener: inner}
	l.left.Store(5)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	defer func() {
		srv.Shutdown()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	c, err := greeting(inner.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatalf("no client served after EMFILE: %v", err)
	}
	c.Close()
	if l.left.Load() >= 0 {
		t.Fatalf("the failing accepts were not all tried: %d left", l.left.Load())
	}
	select {
	case err := <-done:
		t.Fatalf("Serve returned: %v", err)
	default:
	}
}

// Like qemu-nbd, a server at its connection limit leaves a new client
// waiting (no greeting, no hang-up) and serves it once a slot frees.
func TestMaxConnsWaitsForSlot(t *testing.T) {
	_, addr, _ := testServer(t, 1<<20, func(s *Server) { s.MaxConns = 1 })
	first := dial(t, addr)
	first.goTo("", false)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	var b [18]byte
	var ne net.Error
	if _, err := io.ReadFull(c, b[:]); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("client over the limit: %v, want it left waiting", err)
	}
	first.req(nbd.CmdDisc, 0, 0, 0, 0, nil)
	first.expectClosed()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, b[:]); err != nil || be.Uint64(b[:]) != nbd.Magic {
		t.Fatalf("waiting client not served once the slot freed: %v", err)
	}
	second := &client{t: t, c: c}
	second.goTo("", true)
	second.req(nbd.CmdRead, 0, 1, 0, 4096, nil)
	if e := replyErr(second.reply(0)); e != 0 {
		t.Fatalf("read: error %d", e)
	}
}

// A server shutting down refuses options with NBD_REP_ERR_SHUTDOWN; ABORT
// is still acknowledged, and the client's soft disconnect ends Shutdown
// well before the grace period.
func TestShutdownDuringHandshake(t *testing.T) {
	srv, addr, _ := testServer(t, 1<<20, func(s *Server) { s.ShutdownGrace = 10 * time.Second })
	cl := dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle | nbd.ClientFlagNoZeroes)
	cl.opt(nbd.OptStructuredReply, nil)
	if h, _ := cl.optReply(); h.Type != nbd.RepAck {
		t.Fatalf("structured reply: %#x", h.Type)
	}
	down := make(chan struct{})
	start := time.Now()
	go func() { srv.Shutdown(); close(down) }()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		c.Close()
		if i > 200 {
			t.Fatal("listener still open")
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{nbd.OptList, nil},
		{nbd.OptGo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{})},
		{nbd.OptInfo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{})},
		{nbd.OptSetMetaContext, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Queries: []string{nbd.MetaBaseAllocation}})},
	} {
		cl.opt(o.opt, o.data)
		if h, _ := cl.optReply(); h.Type != nbd.RepErrShutdown || h.Option != o.opt {
			t.Fatalf("option %d during shutdown: reply %#x for option %d", o.opt, h.Type, h.Option)
		}
	}
	cl.opt(nbd.OptAbort, nil)
	if h, _ := cl.optReply(); h.Type != nbd.RepAck {
		t.Fatalf("ABORT during shutdown: %#x", h.Type)
	}
	cl.expectClosed()
	select {
	case <-down:
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("Shutdown took %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown still waiting after the client aborted")
	}
}
