package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
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
	waitListenerClosed(t, addr)
	cl.expectOptErr(nbd.RepErrShutdown,
		opt{nbd.OptList, nil},
		opt{nbd.OptGo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{})},
		opt{nbd.OptInfo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{})},
		opt{nbd.OptSetMetaContext, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Queries: []string{nbd.MetaBaseAllocation}})})
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

// goroutines waits for the goroutine count to come down to want.
func goroutines(t *testing.T, after string, want int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > want && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > want {
		buf := make([]byte, 1<<20)
		t.Fatalf("after %s: %d goroutines, want %d:\n%s", after, n, want, buf[:runtime.Stack(buf, true)])
	}
}

// Misbehaving clients leave nothing behind once they are gone, while the
// server keeps running (no Shutdown to clean up after them).
func TestMisbehavingClientsLeakNothing(t *testing.T) {
	_, addr, _ := testServer(t, 32<<20, func(s *Server) { s.HandshakeTimeout = 300 * time.Millisecond })
	// Warm up: the first connection starts runtime helpers (the poller).
	warm := dial(t, addr)
	warm.goTo("", false)
	warm.req(nbd.CmdDisc, 0, 0, 0, 0, nil)
	warm.expectClosed()
	warm.c.Close()
	time.Sleep(100 * time.Millisecond)
	base := runtime.NumGoroutine()

	misbehave := map[string]func(cl *client){
		"bad request magic, replies unread": func(cl *client) {
			cl.goTo("", true)
			cl.flood(20)
			cl.write(bytes.Repeat([]byte{0xee}, nbd.RequestSize))
		},
		"stall mid-handshake": func(cl *client) {
			cl.write([]byte{0, 0})
			cl.expectClosed() // the handshake timeout
		},
		"stall after options": func(cl *client) {
			cl.flags(nbd.ClientFlagFixedNewstyle)
			cl.opt(nbd.OptStructuredReply, nil)
			cl.optReply()
			cl.expectClosed()
		},
		"drop mid-write": func(cl *client) {
			cl.goTo("", false)
			cl.write(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdWrite, Length: 1 << 20}))
			cl.write(make([]byte, 1000))
		},
		"huge option length": func(cl *client) {
			cl.flags(nbd.ClientFlagFixedNewstyle)
			hdr := be.AppendUint64(nil, nbd.OptMagic)
			hdr = be.AppendUint32(hdr, nbd.OptGo)
			cl.write(be.AppendUint32(hdr, 0xffffffff))
			cl.expectClosed()
		},
		"bad option magic": func(cl *client) {
			cl.flags(nbd.ClientFlagFixedNewstyle)
			cl.write(bytes.Repeat([]byte{0x55}, 16))
			cl.expectClosed()
		},
		"requests then vanish": func(cl *client) {
			cl.goTo("", true)
			cl.flood(25)
		},
		"half a request header": func(cl *client) {
			cl.goTo("", false)
			cl.write(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdRead, Length: 512})[:10])
		},
	}
	// Not subtests: each would count a goroutine of its own.
	for name, f := range misbehave {
		for i := 0; i < 2; i++ {
			cl := dial(t, addr)
			f(cl)
			cl.c.Close()
		}
		goroutines(t, name, base)
	}
	// Still serving.
	cl := dial(t, addr)
	cl.goTo("", true)
	cl.req(nbd.CmdWrite, 0, 1, 0, 3, []byte{1, 2, 3})
	if e := replyErr(cl.reply(0)); e != 0 {
		t.Fatalf("write after the misbehaving clients: error %d", e)
	}
}

// A client that stalls in the transmission phase (half a write payload,
// or replies it never reads) holds up no other client.
func TestStalledClientsDoNotStallOthers(t *testing.T) {
	_, addr, img := testServer(t, 32<<20, nil)
	half := dial(t, addr)
	half.goTo("", false)
	half.write(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdWrite, Cookie: 1, Offset: 0, Length: 1 << 20}))
	half.write(make([]byte, 4096))
	deaf := dial(t, addr)
	deaf.goTo("", true)
	deaf.flood(30)
	deaf.req(nbd.CmdFlush, 0, 99, 0, 0, nil)

	done := make(chan error, 1)
	go func() {
		c, err := greeting(addr, 5*time.Second)
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// Hand-driven without t: this goroutine must not call t.Fatal.
		c.Write(be.AppendUint32(nil, nbd.ClientFlagFixedNewstyle|nbd.ClientFlagNoZeroes))
		c.Write(nbd.AppendOpt(nil, nbd.OptGo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{})))
		for {
			var h [nbd.OptReplyHeaderSize]byte
			if _, err := io.ReadFull(c, h[:]); err != nil {
				done <- err
				return
			}
			oh, _ := nbd.ParseOptReplyHeader(h[:])
			if _, err := io.CopyN(io.Discard, c, int64(oh.Length)); err != nil {
				done <- err
				return
			}
			if oh.Type == nbd.RepAck {
				break
			}
		}
		payload := bytes.Repeat([]byte{7}, 64<<10)
		c.Write(append(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdWrite, Flags: nbd.CmdFlagFUA, Cookie: 2, Offset: 1 << 20, Length: 64 << 10}), payload...))
		c.Write(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdFlush, Cookie: 3}))
		c.Write(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdRead, Cookie: 4, Offset: 1 << 20, Length: 64 << 10}))
		for i := 0; i < 3; i++ {
			var r [nbd.SimpleReplySize]byte
			if _, err := io.ReadFull(c, r[:]); err != nil {
				done <- err
				return
			}
			h, _ := nbd.ParseReply(r[:])
			if h.Error != 0 {
				done <- fmt.Errorf("request %d: error %d", h.Cookie, h.Error)
				return
			}
			if h.Cookie == 4 {
				got := make([]byte, 64<<10)
				if _, err := io.ReadFull(c, got); err != nil {
					done <- err
					return
				}
				if !bytes.Equal(got, payload) {
					done <- errors.New("read back wrong data")
					return
				}
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the third client: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the third client was held up by the stalled ones")
	}
	got := make([]byte, 4096)
	if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("half a write payload reached the image: %v", err)
	}
}

// ServeConn counts the slot a Serve loop holds for its next client as
// taken: with MaxConns 2, one client served and Serve waiting for the
// next, a connection handed to ServeConn is closed, and the next client
// Serve accepts makes two connections, not three.
func TestServeConnRespectsReservedSlots(t *testing.T) {
	srv, addr, _ := testServer(t, 1<<20, func(s *Server) { s.MaxConns = 2 })
	first := dial(t, addr)
	first.goTo("", false)
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			srv.mu.Lock()
			ok := cond()
			srv.mu.Unlock()
			if ok {
				return
			}
		}
		t.Fatalf("timed out waiting for %s", what)
	}
	waitFor("Serve to hold the second slot", func() bool { return len(srv.conns) == 1 && srv.reserved == 1 })

	server, client := net.Pipe()
	defer client.Close()
	go srv.ServeConn(server)
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [18]byte
	if n, err := io.ReadFull(client, b[:]); !errors.Is(err, io.EOF) {
		t.Fatalf("ServeConn over the limit: read %d bytes, %v; want the connection closed", n, err)
	}

	second := dial(t, addr)
	second.goTo("", false)
	srv.mu.Lock()
	n := len(srv.conns)
	srv.mu.Unlock()
	if n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}
