package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"vdisk/block"
	"vdisk/format/mem"
	"vdisk/nbd"
)

var be = binary.BigEndian

// testServer serves a RAM image (and a read-only copy) on a TCP port.
func testServer(t *testing.T, size int64, tune func(*Server)) (*Server, string, block.Image) {
	t.Helper()
	img := mem.New(size)
	ro := mem.New(size)
	srv := &Server{Exports: []*Export{{Name: "", Image: img}, {Name: "ro", Image: readOnly{ro}}}}
	if tune != nil {
		tune(srv)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	t.Cleanup(func() { srv.Shutdown(); <-done })
	return srv, l.Addr().String(), img
}

type readOnly struct{ block.Image }

func (readOnly) ReadOnly() bool { return true }

// client is a hand-driven NBD client for poking at the server.
type client struct {
	t *testing.T
	c net.Conn
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cl := &client{t: t, c: c}
	var hello [18]byte
	cl.read(hello[:])
	if be.Uint64(hello[:]) != nbd.Magic || be.Uint64(hello[8:]) != nbd.OptMagic {
		t.Fatalf("bad greeting % x", hello)
	}
	return cl
}

// opTimeout bounds each read or write of the test client, so that a
// server that stops answering fails the test instead of hanging it. It is
// per operation, not per connection: under -race on a loaded 2-core
// machine a test that moves tens of MiB takes well over ten seconds.
const opTimeout = time.Minute

func (cl *client) read(b []byte) {
	cl.t.Helper()
	cl.c.SetReadDeadline(time.Now().Add(opTimeout))
	if _, err := io.ReadFull(cl.c, b); err != nil {
		cl.t.Fatalf("read: %v", err)
	}
}

func (cl *client) write(b []byte) {
	cl.t.Helper()
	cl.c.SetWriteDeadline(time.Now().Add(opTimeout))
	if _, err := cl.c.Write(b); err != nil {
		cl.t.Fatalf("write: %v", err)
	}
}

func (cl *client) flags(f uint32) { cl.write(be.AppendUint32(nil, f)) }

func (cl *client) opt(opt uint32, data []byte) { cl.write(nbd.AppendOpt(nil, opt, data)) }

func (cl *client) optReply() (nbd.OptReplyHeader, []byte) {
	cl.t.Helper()
	var h [nbd.OptReplyHeaderSize]byte
	cl.read(h[:])
	oh, err := nbd.ParseOptReplyHeader(h[:])
	if err != nil {
		cl.t.Fatal(err)
	}
	data := make([]byte, oh.Length)
	cl.read(data)
	return oh, data
}

// expectClosed checks that the server hung up.
func (cl *client) expectClosed() {
	cl.t.Helper()
	cl.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	for {
		_, err := cl.c.Read(b[:])
		if err == nil {
			continue // drain whatever came before the close
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			cl.t.Fatal("connection still open")
		}
		return
	}
}

// goTo finishes the handshake with structured replies and base:allocation.
func (cl *client) goTo(export string, structured bool) {
	cl.t.Helper()
	cl.flags(nbd.ClientFlagFixedNewstyle | nbd.ClientFlagNoZeroes)
	if structured {
		cl.opt(nbd.OptStructuredReply, nil)
		if h, _ := cl.optReply(); h.Type != nbd.RepAck {
			cl.t.Fatalf("structured reply: %#x", h.Type)
		}
		cl.opt(nbd.OptSetMetaContext, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Export: export, Queries: []string{"base:allocation", "qemu:nope"}}))
		h, data := cl.optReply()
		if h.Type != nbd.RepMetaContext || string(data[4:]) != "base:allocation" {
			cl.t.Fatalf("meta context: %#x %q", h.Type, data)
		}
		if h, _ := cl.optReply(); h.Type != nbd.RepAck {
			cl.t.Fatalf("meta context ack: %#x", h.Type)
		}
	}
	cl.opt(nbd.OptGo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{Name: export, Infos: []uint16{nbd.InfoBlockSize, nbd.InfoName}}))
	for {
		h, data := cl.optReply()
		if h.Type == nbd.RepAck {
			return
		}
		if h.Type != nbd.RepInfo {
			cl.t.Fatalf("GO: reply %#x %q", h.Type, data)
		}
	}
}

func (cl *client) req(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	cl.write(append(nbd.AppendRequest(nil, nbd.Request{Type: typ, Flags: flags, Cookie: cookie, Offset: off, Length: length}), payload...))
}

// simple reads a simple reply and returns its error and cookie.
func (cl *client) simple() (uint32, uint64) {
	cl.t.Helper()
	var b [nbd.SimpleReplySize]byte
	cl.read(b[:])
	h, err := nbd.ParseReply(b[:])
	if err != nil || h.Structured {
		cl.t.Fatalf("simple reply: %v %+v", err, h)
	}
	return h.Error, h.Cookie
}

type chunk struct {
	nbd.ReplyHeader
	data []byte
}

// reply reads one reply, simple or a whole structured series.
func (cl *client) reply(readLen int) []chunk {
	cl.t.Helper()
	var out []chunk
	for {
		var b [nbd.StructuredReplySize]byte
		cl.read(b[:4])
		size, err := nbd.ParseReplyMagic(b[:4])
		if err != nil {
			cl.t.Fatal(err)
		}
		cl.read(b[4:size])
		h, _ := nbd.ParseReply(b[:size])
		if !h.Structured {
			data := []byte{}
			if h.Error == 0 && readLen > 0 {
				data = make([]byte, readLen)
				cl.read(data)
			}
			return []chunk{{h, data}}
		}
		data := make([]byte, h.Length)
		cl.read(data)
		out = append(out, chunk{h, data})
		if h.Flags&nbd.ReplyFlagDone != 0 {
			return out
		}
	}
}

func replyErr(cs []chunk) uint32 {
	for _, c := range cs {
		if !c.Structured {
			return c.Error
		}
		if nbd.IsReplyError(c.Type) {
			e, _, _ := nbd.ParseErrorChunk(c.data)
			return e
		}
	}
	return 0
}

func TestHandshakeOptions(t *testing.T) {
	_, addr, _ := testServer(t, 1<<20, func(s *Server) { s.Exports[0].Description = "desc" })
	cl := dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle)
	cl.opt(999, []byte("junk"))
	if h, _ := cl.optReply(); h.Type != nbd.RepErrUnsup || h.Option != 999 {
		t.Fatalf("unknown option: %+v", h)
	}
	cl.opt(nbd.OptList, nil)
	var names []string
	for {
		h, data := cl.optReply()
		if h.Type == nbd.RepAck {
			break
		}
		n := be.Uint32(data)
		names = append(names, string(data[4:4+n]))
	}
	if fmt.Sprint(names) != "[ ro]" {
		t.Fatalf("list: %q", names)
	}
	cl.opt(nbd.OptList, []byte("x"))
	if h, _ := cl.optReply(); h.Type != nbd.RepErrInvalid {
		t.Fatalf("list with data: %#x", h.Type)
	}
	cl.opt(nbd.OptSetMetaContext, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Queries: []string{"base:allocation"}}))
	if h, _ := cl.optReply(); h.Type != nbd.RepErrInvalid {
		t.Fatalf("meta context before structured replies: %#x", h.Type)
	}
	cl.opt(nbd.OptStartTLS, nil)
	if h, _ := cl.optReply(); h.Type != nbd.RepErrPolicy {
		t.Fatalf("STARTTLS without TLS: %#x", h.Type)
	}
	cl.opt(nbd.OptInfo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{Name: "nope"}))
	if h, _ := cl.optReply(); h.Type != nbd.RepErrUnknown {
		t.Fatalf("INFO unknown export: %#x", h.Type)
	}
	cl.opt(nbd.OptInfo, []byte{0, 0, 0, 9, 1})
	if h, _ := cl.optReply(); h.Type != nbd.RepErrInvalid {
		t.Fatalf("INFO malformed: %#x", h.Type)
	}
	cl.opt(nbd.OptInfo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{Infos: []uint16{nbd.InfoDescription}}))
	var gotDesc, gotExport bool
	for {
		h, data := cl.optReply()
		if h.Type == nbd.RepAck {
			break
		}
		switch be.Uint16(data) {
		case nbd.InfoExport:
			gotExport = be.Uint64(data[2:]) == 1<<20
		case nbd.InfoDescription:
			gotDesc = string(data[2:]) == "desc"
		}
	}
	if !gotDesc || !gotExport {
		t.Fatal("INFO did not describe the export")
	}
	cl.opt(nbd.OptAbort, nil)
	if h, _ := cl.optReply(); h.Type != nbd.RepAck {
		t.Fatalf("abort: %#x", h.Type)
	}
	cl.expectClosed()
}

func TestExportNameOldPath(t *testing.T) {
	_, addr, _ := testServer(t, 1<<20, nil)
	cl := dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle) // zeroes wanted
	cl.opt(nbd.OptExportName, []byte("ro"))
	b := make([]byte, 134)
	cl.read(b)
	if be.Uint64(b) != 1<<20 || be.Uint16(b[8:])&nbd.FlagReadOnly == 0 || !block.IsZero(b[10:]) {
		t.Fatalf("export name reply % x", b[:10])
	}
	cl.req(nbd.CmdRead, 0, 7, 0, 512, nil)
	if cs := cl.reply(512); replyErr(cs) != 0 || cs[0].Cookie != 7 {
		t.Fatalf("read: %+v", cs[0].ReplyHeader)
	}

	cl = dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle)
	cl.opt(nbd.OptExportName, []byte("nope"))
	cl.expectClosed()
}

func TestBadHandshakes(t *testing.T) {
	_, addr, _ := testServer(t, 1<<20, nil)
	// Not fixed newstyle.
	cl := dial(t, addr)
	cl.flags(0)
	cl.expectClosed()
	// Unknown client flags.
	cl = dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle | 1<<7)
	cl.expectClosed()
	// Bad option magic.
	cl = dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle)
	cl.write(bytes.Repeat([]byte{0xee}, 16))
	cl.expectClosed()
	// An option claiming 4 GiB of data: closed, nothing allocated.
	cl = dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle)
	hdr := be.AppendUint64(nil, nbd.OptMagic)
	hdr = be.AppendUint32(hdr, nbd.OptGo)
	hdr = be.AppendUint32(hdr, 0xffffffff)
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	cl.write(hdr)
	cl.expectClosed()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if after.TotalAlloc-before.TotalAlloc > 16<<20 {
		t.Fatalf("huge option allocated %d bytes", after.TotalAlloc-before.TotalAlloc)
	}
	// Meta context with a lying query count.
	cl = dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle)
	cl.opt(nbd.OptStructuredReply, nil)
	cl.optReply()
	cl.opt(nbd.OptListMetaContext, []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	if h, _ := cl.optReply(); h.Type != nbd.RepErrInvalid {
		t.Fatalf("lying meta request: %#x", h.Type)
	}
}

func TestHandshakeTimeoutDoesNotStallOthers(t *testing.T) {
	_, addr, _ := testServer(t, 1<<20, func(s *Server) { s.HandshakeTimeout = 300 * time.Millisecond })
	staller := dial(t, addr)
	staller.write([]byte{0, 0}) // half of the client flags, then nothing
	// Another client is served while the first one stalls.
	cl := dial(t, addr)
	cl.goTo("", true)
	cl.req(nbd.CmdRead, 0, 1, 0, 4096, nil)
	if e := replyErr(cl.reply(4096)); e != 0 {
		t.Fatalf("read: %d", e)
	}
	start := time.Now()
	staller.expectClosed()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("staller closed after %v", d)
	}
}

func TestTransmissionErrors(t *testing.T) {
	_, addr, _ := testServer(t, 1<<20, nil)
	cl := dial(t, addr)
	cl.goTo("", true)
	check := func(what string, want uint32, readLen int) {
		t.Helper()
		if e := replyErr(cl.reply(readLen)); e != want {
			t.Fatalf("%s: error %d, want %d", what, e, want)
		}
	}
	cl.req(nbd.CmdRead, 0, 1, 1<<20-10, 20, nil)
	check("read past end", nbd.EINVAL, 0)
	cl.req(nbd.CmdRead, 0, 1, 1<<63, 1, nil)
	check("read at huge offset", nbd.EINVAL, 0)
	cl.req(nbd.CmdWrite, 0, 2, 1<<20-10, 20, make([]byte, 20))
	check("write past end", nbd.ENOSPC, 0)
	cl.req(nbd.CmdWriteZeroes, 0, 2, 1<<20, 1, nil)
	check("write zeroes past end", nbd.ENOSPC, 0)
	cl.req(nbd.CmdTrim, 0, 2, 1<<20, 1, nil)
	check("trim past end", nbd.EINVAL, 0)
	cl.req(nbd.CmdRead, 0, 3, 0, 64<<20, nil)
	check("64 MiB read", nbd.EINVAL, 0)
	cl.req(nbd.CmdRead, nbd.CmdFlagDF, 3, 0, 64<<20, nil)
	check("64 MiB read with DF", nbd.EOVERFLOW, 0)
	// A 40 MiB write is refused, its payload skipped, the stream intact.
	cl.req(nbd.CmdWrite, 0, 4, 0, 40<<20, make([]byte, 40<<20))
	check("40 MiB write", nbd.EINVAL, 0)
	cl.req(99, 0, 5, 0, 0, nil)
	check("unknown command", nbd.EINVAL, 0)
	cl.req(nbd.CmdRead, 1<<9, 6, 0, 1, nil)
	check("unknown flag", nbd.EINVAL, 0)
	cl.req(nbd.CmdWrite, nbd.CmdFlagReqOne, 6, 0, 1, []byte{1})
	check("flag for another command", nbd.EINVAL, 0)
	cl.req(nbd.CmdBlockStatus, 0, 7, 0, 0, nil)
	check("empty block status", nbd.EINVAL, 0)
	cl.req(nbd.CmdFlush, 0, 8, 5, 0, nil)
	check("flush with offset", nbd.EINVAL, 0)
	// Still alive and correct.
	cl.req(nbd.CmdWrite, nbd.CmdFlagFUA, 9, 4096, 4, []byte{1, 2, 3, 4})
	check("write", 0, 0)
	cl.req(nbd.CmdRead, nbd.CmdFlagDF, 10, 4094, 8, nil)
	cs := cl.reply(0)
	if len(cs) != 1 || cs[0].Type != nbd.ReplyTypeOffsetData || !bytes.Equal(cs[0].data[8:], []byte{0, 0, 1, 2, 3, 4, 0, 0}) {
		t.Fatalf("read back: %+v", cs)
	}
	// Bad request magic ends the connection.
	cl.write(make([]byte, nbd.RequestSize))
	cl.expectClosed()

	ro := dial(t, addr)
	ro.goTo("ro", false)
	ro.req(nbd.CmdWrite, 0, 1, 0, 3, []byte{1, 2, 3})
	if e, _ := ro.simple(); e != nbd.EPERM {
		t.Fatalf("write to read-only: %d", e)
	}
	ro.req(nbd.CmdWriteZeroes, 0, 1, 0, 3, nil)
	if e, _ := ro.simple(); e != nbd.EPERM {
		t.Fatalf("zero read-only: %d", e)
	}
	ro.req(nbd.CmdBlockStatus, 0, 2, 0, 512, nil)
	if e, _ := ro.simple(); e != nbd.EINVAL {
		t.Fatalf("block status without meta context: %d", e)
	}
}

func TestStructuredReadAndBlockStatus(t *testing.T) {
	_, addr, img := testServer(t, 1<<20, nil)
	if _, err := img.WriteAt(bytes.Repeat([]byte{7}, 64<<10), 128<<10); err != nil {
		t.Fatal(err)
	}
	cl := dial(t, addr)
	cl.goTo("", true)
	cl.req(nbd.CmdBlockStatus, 0, 1, 0, 1<<20, nil)
	cs := cl.reply(0)
	if len(cs) != 1 || cs[0].Type != nbd.ReplyTypeBlockStatus {
		t.Fatalf("block status: %+v", cs)
	}
	id, ds, err := nbd.ParseBlockStatus(cs[0].data)
	if err != nil || id != metaContextID {
		t.Fatal(err, id)
	}
	var total uint64
	sawData := false
	for _, d := range ds {
		if total <= 128<<10 && total+uint64(d.Length) >= 192<<10 && d.Flags == 0 {
			sawData = true
		}
		total += uint64(d.Length)
	}
	if total != 1<<20 || !sawData {
		t.Fatalf("descriptors %+v", ds)
	}
	cl.req(nbd.CmdBlockStatus, nbd.CmdFlagReqOne, 2, 0, 1<<20, nil)
	_, ds, _ = nbd.ParseBlockStatus(cl.reply(0)[0].data)
	if len(ds) != 1 {
		t.Fatalf("REQ_ONE gave %d descriptors", len(ds))
	}
	// A read over data and holes: chunks cover the range exactly once.
	cl.req(nbd.CmdRead, 0, 3, 64<<10, 256<<10, nil)
	got := make([]byte, 256<<10)
	covered := 0
	for _, c := range cl.reply(0) {
		off := be.Uint64(c.data) - 64<<10
		switch c.Type {
		case nbd.ReplyTypeOffsetData:
			covered += copy(got[off:], c.data[8:])
		case nbd.ReplyTypeOffsetHole:
			covered += int(be.Uint32(c.data[8:]))
		default:
			t.Fatalf("chunk type %d", c.Type)
		}
	}
	want := make([]byte, 256<<10)
	copy(want[64<<10:], bytes.Repeat([]byte{7}, 64<<10))
	if covered != len(got) || !bytes.Equal(got, want) {
		t.Fatalf("structured read covered %d bytes, content equal %v", covered, bytes.Equal(got, want))
	}
}

// flaky fails I/O in a range and delays reads at one offset.
type flaky struct {
	block.Image
	slow chan struct{}
}

func (f flaky) ReadAt(p []byte, off int64) (int, error) {
	if off == 0 {
		<-f.slow
	}
	if off >= 512<<10 {
		return 0, fmt.Errorf("disk on fire: %w", errors.New("eio"))
	}
	return f.Image.ReadAt(p, off)
}

func (f flaky) BlockStatus(off, n int64) ([]block.Extent, error) {
	return []block.Extent{{Offset: off, Length: n, Status: block.StatusData}}, nil
}

func TestIOErrorAndOutOfOrder(t *testing.T) {
	slow := make(chan struct{})
	_, addr, _ := testServer(t, 1<<20, func(s *Server) {
		s.Exports[0].Image = flaky{s.Exports[0].Image, slow}
	})
	cl := dial(t, addr)
	cl.goTo("", true)
	cl.req(nbd.CmdRead, 0, 1, 0, 512, nil)       // held back
	cl.req(nbd.CmdRead, 0, 2, 512<<10, 512, nil) // fails
	cs := cl.reply(0)
	if cs[0].Cookie != 2 || replyErr(cs) != nbd.EIO {
		t.Fatalf("expected the failing read first: %+v", cs[0].ReplyHeader)
	}
	close(slow)
	cs = cl.reply(0)
	if cs[0].Cookie != 1 || replyErr(cs) != 0 {
		t.Fatalf("held read: %+v", cs[0].ReplyHeader)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		srv := &Server{Exports: []*Export{{Image: mem.New(1 << 20)}}, HandshakeTimeout: 200 * time.Millisecond}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					return
				}
				defer c.Close()
				switch i % 4 {
				case 0: // stall
					time.Sleep(50 * time.Millisecond)
				case 1: // drop mid-write
					cl := &client{t: t, c: c}
					var hello [18]byte
					io.ReadFull(c, hello[:])
					cl.goTo("", false)
					c.Write(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdWrite, Length: 1 << 20}))
					c.Write(make([]byte, 1000))
				case 2: // garbage
					c.Write(bytes.Repeat([]byte{0x55}, 100))
				case 3: // many requests then vanish
					cl := &client{t: t, c: c}
					var hello [18]byte
					io.ReadFull(c, hello[:])
					cl.goTo("", true)
					for j := 0; j < 100; j++ {
						c.Write(nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdRead, Cookie: uint64(j), Length: 64 << 10}))
					}
				}
			}(i)
		}
		wg.Wait()
		srv.Shutdown()
	}()
	goroutines(t, "Shutdown", before)
}

// chunkTypes reads a structured read reply, checks its bytes against
// want, and returns the chunk types in order.
func (cl *client) chunkTypes(off uint64, want []byte) []uint16 {
	cl.t.Helper()
	got := make([]byte, len(want))
	covered := 0
	var types []uint16
	for _, c := range cl.reply(0) {
		types = append(types, c.Type)
		o := be.Uint64(c.data) - off
		switch c.Type {
		case nbd.ReplyTypeOffsetData:
			covered += copy(got[o:], c.data[8:])
		case nbd.ReplyTypeOffsetHole:
			covered += int(be.Uint32(c.data[8:]))
		default:
			cl.t.Fatalf("chunk type %d", c.Type)
		}
	}
	if covered != len(want) || !bytes.Equal(got, want) {
		cl.t.Fatalf("read at %d covered %d of %d bytes, content equal %v", off, covered, len(want), bytes.Equal(got, want))
	}
	return types
}

// Reads remember where data is; zeroing or trimming must make holes show
// up as hole chunks again, on this connection and on others.
func TestReadDataCacheInvalidation(t *testing.T) {
	_, addr, img := testServer(t, 4<<20, nil)
	data := bytes.Repeat([]byte{9}, 4<<20)
	if _, err := img.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	cl, other := dial(t, addr), dial(t, addr)
	cl.goTo("", true)
	other.goTo("", true)
	cl.req(nbd.CmdRead, 0, 1, 0, 64<<10, nil)
	if ts := cl.chunkTypes(0, data[:64<<10]); len(ts) != 1 || ts[0] != nbd.ReplyTypeOffsetData {
		t.Fatalf("data read: chunks %v", ts)
	}
	for i, typ := range []uint16{nbd.CmdWriteZeroes, nbd.CmdTrim} {
		off := uint64(1<<20 + i<<20)
		cl.req(typ, 0, 2, off, 128<<10, nil)
		if e, _ := cl.simple(); e != 0 {
			t.Fatalf("%s: error %d", nbd.CmdName(typ), e)
		}
		want := append(append(bytes.Clone(data[:64<<10]), make([]byte, 128<<10)...), data[:64<<10]...)
		other.req(nbd.CmdRead, 0, 3, off-64<<10, 256<<10, nil)
		ts := other.chunkTypes(off-64<<10, want)
		if len(ts) != 3 || ts[1] != nbd.ReplyTypeOffsetHole {
			t.Fatalf("after %s: chunks %v", nbd.CmdName(typ), ts)
		}
	}
}
