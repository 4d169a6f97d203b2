package nbd

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"vdisk/block"
	"vdisk/format/mem"
	"vdisk/nbd"
)

// selfSigned makes a throwaway server certificate.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// With TLS configured, every option before STARTTLS but ABORT is refused
// with NBD_REP_ERR_TLS_REQD and the connection survives; EXPORT_NAME,
// which has no error reply, ends it; after STARTTLS the same options work.
func TestTLSRequiredBeforeStartTLS(t *testing.T) {
	cert := selfSigned(t)
	_, addr, _ := testServer(t, 1<<20, func(s *Server) {
		s.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	cl := dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle | nbd.ClientFlagNoZeroes)
	cl.expectOptErr(nbd.RepErrTLSReqd,
		opt{nbd.OptList, nil},
		opt{nbd.OptInfo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{})},
		opt{nbd.OptGo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{})},
		opt{nbd.OptStructuredReply, nil},
		opt{nbd.OptListMetaContext, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Queries: []string{"base:allocation"}})},
		opt{nbd.OptSetMetaContext, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Queries: []string{"base:allocation"}})},
		opt{999, []byte("junk")})
	cl.opt(nbd.OptStartTLS, nil)
	if h, _ := cl.optReply(); h.Type != nbd.RepAck {
		t.Fatalf("STARTTLS: %#x", h.Type)
	}
	tc := tls.Client(cl.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	cl.c = tc
	cl.opt(nbd.OptStartTLS, nil)
	if h, _ := cl.optReply(); h.Type != nbd.RepErrInvalid {
		t.Fatalf("second STARTTLS: %#x", h.Type)
	}
	cl.opt(nbd.OptGo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{}))
	for {
		h, _ := cl.optReply()
		if h.Type == nbd.RepAck {
			break
		}
		if h.Type != nbd.RepInfo {
			t.Fatalf("GO over TLS: %#x", h.Type)
		}
	}
	cl.req(nbd.CmdRead, 0, 1, 0, 512, nil)
	if e, c := cl.simple(); e != 0 || c != 1 {
		t.Fatalf("read over TLS: error %d cookie %d", e, c)
	}
	var b [512]byte
	cl.read(b[:])

	// ABORT before TLS is answered and ends the session.
	cl = dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle)
	cl.opt(nbd.OptAbort, nil)
	if h, _ := cl.optReply(); h.Type != nbd.RepAck {
		t.Fatalf("ABORT before TLS: %#x", h.Type)
	}
	cl.expectClosed()

	// EXPORT_NAME cannot be refused with an error reply: the server hangs up.
	cl = dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle)
	cl.opt(nbd.OptExportName, nil)
	cl.expectClosed()
}

// noFastZero is an image that cannot zero without writing zero bytes.
type noFastZero struct{ block.Image }

func (i noFastZero) WriteZeroes(off, n int64, f block.ZeroFlags) error {
	if f&block.ZeroFast != 0 {
		return block.ErrNotSupported
	}
	return i.Image.WriteZeroes(off, n, f)
}

// CACHE is accepted in range and refused past the end; WRITE_ZEROES with
// NO_HOLE and FAST_ZERO zeroes, and FAST_ZERO on an image that cannot zero
// quickly fails with ENOTSUP, leaving the data alone and the connection up.
func TestCacheAndZeroFlags(t *testing.T) {
	_, addr, img := testServer(t, 1<<20, func(s *Server) {
		s.Exports[0].Image = noFastZero{s.Exports[0].Image}
	})
	fill := bytes.Repeat([]byte{9}, 64<<10)
	if _, err := img.WriteAt(fill, 0); err != nil {
		t.Fatal(err)
	}
	cl := dial(t, addr)
	cl.goTo("", false)
	simple := func(what string, want uint32, cookie uint64) {
		t.Helper()
		if e, c := cl.simple(); e != want || c != cookie {
			t.Fatalf("%s: error %d cookie %d, want %d %d", what, e, c, want, cookie)
		}
	}
	cl.req(nbd.CmdCache, 0, 1, 0, 64<<10, nil)
	simple("cache", 0, 1)
	cl.req(nbd.CmdCache, 0, 2, 1<<20-512, 1024, nil)
	simple("cache past the end", nbd.EINVAL, 2)
	cl.req(nbd.CmdWriteZeroes, nbd.CmdFlagFastZero, 3, 0, 4096, nil)
	simple("fast zero", nbd.ENOTSUP, 3)
	got := make([]byte, 4096)
	if _, err := img.ReadAt(got, 0); err != nil || !bytes.Equal(got, fill[:4096]) {
		t.Fatalf("a refused fast zero changed the data: %v", err)
	}
	cl.req(nbd.CmdWriteZeroes, nbd.CmdFlagNoHole|nbd.CmdFlagFUA, 4, 0, 4096, nil)
	simple("zero, no hole", 0, 4)
	cl.req(nbd.CmdWriteZeroes, 0, 5, 8192, 4096, nil)
	simple("zero", 0, 5)
	if _, err := img.ReadAt(got, 0); err != nil || !block.IsZero(got) {
		t.Fatalf("zeroed range reads %v", err)
	}
	if _, err := img.ReadAt(got, 8192); err != nil || !block.IsZero(got) {
		t.Fatalf("zeroed range reads %v", err)
	}
	if _, err := img.ReadAt(got, 4096); err != nil || !bytes.Equal(got, fill[:4096]) {
		t.Fatalf("data between the zeroed ranges: %v", err)
	}
}

// panicky is an image with a bug: reads at one offset panic.
type panicky struct{ block.Image }

func (p panicky) ReadAt(b []byte, off int64) (int, error) {
	if off == 4096 {
		panic("driver bug")
	}
	return p.Image.ReadAt(b, off)
}

// A driver panic ends that client's connection only: the server and its
// other clients go on.
func TestDriverPanicEndsOneConnection(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	_, addr, _ := testServer(t, 1<<20, func(s *Server) {
		s.Exports[0].Image = panicky{s.Exports[0].Image}
		s.Logf = func(f string, a ...any) {
			mu.Lock()
			logged = append(logged, fmt.Sprintf(f, a...))
			mu.Unlock()
		}
	})
	other := dial(t, addr)
	other.goTo("", false)
	bad := dial(t, addr)
	bad.goTo("", false)
	bad.req(nbd.CmdRead, 0, 1, 4096, 512, nil)
	bad.expectClosed()
	other.req(nbd.CmdRead, 0, 2, 0, 512, nil)
	if e, c := other.simple(); e != 0 || c != 2 {
		t.Fatalf("the other client after the panic: error %d cookie %d", e, c)
	}
	var b [512]byte
	other.read(b[:])
	again := dial(t, addr)
	again.goTo("", false)
	again.req(nbd.CmdFlush, 0, 3, 0, 0, nil)
	if e, _ := again.simple(); e != 0 {
		t.Fatalf("a new client after the panic: error %d", e)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logged) == 0 || !strings.Contains(logged[0], "driver bug") {
		t.Fatalf("panic not logged: %q", logged)
	}
}

// infoReplies sends INFO (or GO) for export asking for infos and returns
// the information replies by type.
func (cl *client) infoReplies(opt uint32, export string, infos ...uint16) map[uint16][]byte {
	cl.t.Helper()
	cl.opt(opt, nbd.AppendInfoRequest(nil, nbd.InfoRequest{Name: export, Infos: infos}))
	got := map[uint16][]byte{}
	for {
		h, data := cl.optReply()
		if h.Type == nbd.RepAck {
			return got
		}
		if h.Type != nbd.RepInfo || len(data) < 2 {
			cl.t.Fatalf("INFO %q: reply %#x %q", export, h.Type, data)
		}
		typ := be.Uint16(data)
		if _, dup := got[typ]; dup {
			cl.t.Fatalf("INFO %q: information %d sent twice", export, typ)
		}
		got[typ] = data[2:]
	}
}

// NBD_INFO_EXPORT, NAME, DESCRIPTION and BLOCK_SIZE carry the export's
// values: block sizes of 1 (vdisk takes any alignment), 4096 and the
// payload limit, the limit lowered when the server is told so.
func TestInfoValues(t *testing.T) {
	for _, maxPayload := range []uint32{0, 1 << 20} {
		_, addr, _ := testServer(t, 3<<20, func(s *Server) {
			s.Exports[0].Name = "disk"
			s.Exports[0].Description = "the first disk"
			s.MaxPayload = maxPayload
		})
		wantMax := maxPayload
		if wantMax == 0 {
			wantMax = 32 << 20
		}
		cl := dial(t, addr)
		cl.flags(nbd.ClientFlagFixedNewstyle | nbd.ClientFlagNoZeroes)
		got := cl.infoReplies(nbd.OptInfo, "disk", nbd.InfoName, nbd.InfoDescription, nbd.InfoBlockSize)
		if e := got[nbd.InfoExport]; len(e) != 10 || be.Uint64(e) != 3<<20 {
			t.Fatalf("NBD_INFO_EXPORT % x", e)
		}
		if n := got[nbd.InfoName]; string(n) != "disk" {
			t.Fatalf("NBD_INFO_NAME %q", n)
		}
		if d := got[nbd.InfoDescription]; string(d) != "the first disk" {
			t.Fatalf("NBD_INFO_DESCRIPTION %q", d)
		}
		bs := got[nbd.InfoBlockSize]
		if len(bs) != 12 {
			t.Fatalf("NBD_INFO_BLOCK_SIZE % x", bs)
		}
		if lo, pref, hi := be.Uint32(bs), be.Uint32(bs[4:]), be.Uint32(bs[8:]); lo != 1 || pref != 4096 || hi != wantMax {
			t.Fatalf("block sizes %d/%d/%d, want 1/4096/%d", lo, pref, hi, wantMax)
		}
		// The read-only export has no description: none is sent; its
		// name is; block sizes come unasked.
		got = cl.infoReplies(nbd.OptGo, "ro", nbd.InfoName, nbd.InfoDescription)
		if _, ok := got[nbd.InfoDescription]; ok {
			t.Fatalf("empty description sent: %q", got[nbd.InfoDescription])
		}
		if string(got[nbd.InfoName]) != "ro" || len(got[nbd.InfoBlockSize]) != 12 {
			t.Fatalf("GO ro: %v", got)
		}
		if f := be.Uint16(got[nbd.InfoExport][8:]); f&nbd.FlagReadOnly == 0 {
			t.Fatalf("GO ro: flags %#x", f)
		}
	}
}

// metaReplies sends a meta context option and returns the contexts
// (id and name) it names before the ACK.
func (cl *client) metaReplies(opt uint32, export string, queries ...string) [][2]string {
	cl.t.Helper()
	cl.opt(opt, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Export: export, Queries: queries}))
	var out [][2]string
	for {
		h, data := cl.optReply()
		switch h.Type {
		case nbd.RepAck:
			return out
		case nbd.RepMetaContext:
			out = append(out, [2]string{fmt.Sprint(be.Uint32(data)), string(data[4:])})
		default:
			cl.t.Fatalf("meta context %q: reply %#x %q", queries, h.Type, data)
		}
	}
}

// LIST_META_CONTEXT with no query or "base:" lists base:allocation with
// the id the spec reserves (0, as qemu-nbd sends); other namespaces list
// nothing; SET gives it a nonzero id that block status replies carry.
func TestListMetaContext(t *testing.T) {
	_, addr, _ := testServer(t, 1<<20, nil)
	cl := dial(t, addr)
	cl.flags(nbd.ClientFlagFixedNewstyle | nbd.ClientFlagNoZeroes)
	cl.opt(nbd.OptStructuredReply, nil)
	cl.optReply()
	want := "[[0 base:allocation]]"
	for _, q := range [][]string{nil, {"base:"}, {"base:allocation"}, {"qemu:dirty-bitmap:x", "base:"}} {
		if got := fmt.Sprint(cl.metaReplies(nbd.OptListMetaContext, "", q...)); got != want {
			t.Fatalf("LIST %q: %s, want %s", q, got, want)
		}
	}
	for _, q := range [][]string{{"qemu:allocation-depth"}, {"base:nope"}} {
		if got := cl.metaReplies(nbd.OptListMetaContext, "", q...); len(got) != 0 {
			t.Fatalf("LIST %q: %v, want nothing", q, got)
		}
	}
	// "base:" selects nothing in SET, as the spec says.
	if got := cl.metaReplies(nbd.OptSetMetaContext, "", "base:"); len(got) != 0 {
		t.Fatalf("SET base: %v, want nothing", got)
	}
	set := cl.metaReplies(nbd.OptSetMetaContext, "", nbd.MetaBaseAllocation)
	if len(set) != 1 || set[0][0] == "0" || set[0][1] != nbd.MetaBaseAllocation {
		t.Fatalf("SET: %v", set)
	}
	cl.infoReplies(nbd.OptGo, "")
	cl.req(nbd.CmdBlockStatus, 0, 1, 0, 1<<20, nil)
	cs := cl.reply(0)
	if id, _, err := nbd.ParseBlockStatus(cs[0].data); err != nil || fmt.Sprint(id) != set[0][0] {
		t.Fatalf("block status context %d (%v), SET said %s", id, err, set[0][0])
	}
}

// confetti is an image of 512-byte extents, data and zeros in turn, that
// counts what it is asked to map and refuses to map more than 64 MiB at
// once (an unbounded lookup would build millions of extents).
type confetti struct {
	block.Image
	mu            sync.Mutex
	calls, mapped int64
	largest       int64
}

func (c *confetti) BlockStatus(off, n int64) ([]block.Extent, error) {
	c.mu.Lock()
	c.calls++
	c.mapped += n
	c.largest = max(c.largest, n)
	c.mu.Unlock()
	if n > 64<<20 {
		return nil, fmt.Errorf("asked to map %d bytes at once", n)
	}
	var out []block.Extent
	for end := off + n; off < end; {
		l := min(512-off%512, end-off)
		st := block.StatusData
		if off/512%2 == 1 {
			st = block.StatusZero
		}
		out = append(out, block.Extent{Offset: off, Length: l, Status: st, HostOffset: -1})
		off += l
	}
	return out, nil
}

// A block status request over 4 GiB of tiny extents maps in bounded
// windows and stops once the reply is full, or after the first extent
// with REQ_ONE.
func TestBlockStatusBoundedWork(t *testing.T) {
	img := &confetti{Image: mem.New(4<<30 - 512)}
	_, addr, _ := testServer(t, 1<<20, func(s *Server) { s.Exports[0].Image = img })
	cl := dial(t, addr)
	cl.goTo("", true)
	for _, reqOne := range []bool{false, true} {
		img.mu.Lock()
		img.calls, img.mapped, img.largest = 0, 0, 0
		img.mu.Unlock()
		flags := uint16(0)
		wantDescs := maxDescriptors
		if reqOne {
			flags, wantDescs = nbd.CmdFlagReqOne, 1
		}
		cl.req(nbd.CmdBlockStatus, flags, 1, 0, 4<<30-512, nil)
		cs := cl.reply(0)
		if e := replyErr(cs); e != 0 {
			t.Fatalf("REQ_ONE %v: error %d: %q", reqOne, e, cs[0].data)
		}
		_, ds, err := nbd.ParseBlockStatus(cs[0].data)
		if err != nil || len(ds) != wantDescs {
			t.Fatalf("REQ_ONE %v: %d descriptors (%v), want %d", reqOne, len(ds), err, wantDescs)
		}
		for i, d := range ds {
			if d.Length != 512 || (d.Flags == 0) != (i%2 == 0) {
				t.Fatalf("REQ_ONE %v: descriptor %d: %+v", reqOne, i, d)
			}
		}
		img.mu.Lock()
		calls, mapped, largest := img.calls, img.mapped, img.largest
		img.mu.Unlock()
		if largest > statusWindow || mapped > int64(wantDescs)*512+statusWindow {
			t.Fatalf("REQ_ONE %v: %d lookups mapped %d bytes, %d at most at once, for %d descriptors", reqOne, calls, mapped, largest, wantDescs)
		}
	}
}

// The transmission flags say what the server does: FLUSH, FUA and CACHE
// always; TRIM, WRITE_ZEROES and FAST_ZERO unless read-only (which says
// READ_ONLY); DF only with structured replies; CAN_MULTI_CONN unless at
// most one connection is allowed (every connection shares one image, so
// a flush on one covers writes made on all). qemu-nbd 7.2 sends the same
// flags for the same settings (tests/410 compares them).
func TestTransmissionFlags(t *testing.T) {
	const always = nbd.FlagHasFlags | nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendCache
	const writable = nbd.FlagSendTrim | nbd.FlagSendWriteZeroes | nbd.FlagSendFastZero
	for _, maxConns := range []int{1, 4, 0} {
		_, addr, _ := testServer(t, 1<<20, func(s *Server) { s.MaxConns = maxConns })
		for _, export := range []string{"", "ro"} {
			for _, structured := range []bool{false, true} {
				want := always
				if export == "ro" {
					want |= nbd.FlagReadOnly
				} else {
					want |= writable
				}
				if structured {
					want |= nbd.FlagSendDF
				}
				if maxConns != 1 {
					want |= nbd.FlagCanMultiConn
				}
				cl := dial(t, addr)
				cl.flags(nbd.ClientFlagFixedNewstyle | nbd.ClientFlagNoZeroes)
				if structured {
					cl.opt(nbd.OptStructuredReply, nil)
					cl.optReply()
				}
				// INFO, then the old EXPORT_NAME path: the same flags.
				info := cl.infoReplies(nbd.OptInfo, export)
				cl.opt(nbd.OptExportName, []byte(export))
				var b [10]byte
				cl.read(b[:])
				for what, got := range map[string]uint16{"INFO": be.Uint16(info[nbd.InfoExport][8:]), "EXPORT_NAME": be.Uint16(b[8:])} {
					if got != want {
						t.Errorf("shared %d, export %q, structured %v: %s flags %#x, want %#x", maxConns, export, structured, what, got, want)
					}
				}
				cl.req(nbd.CmdDisc, 0, 0, 0, 0, nil)
				cl.expectClosed()
				cl.c.Close()
			}
		}
	}
}
