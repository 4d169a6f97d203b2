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
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{nbd.OptList, nil},
		{nbd.OptInfo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{})},
		{nbd.OptGo, nbd.AppendInfoRequest(nil, nbd.InfoRequest{})},
		{nbd.OptStructuredReply, nil},
		{nbd.OptListMetaContext, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Queries: []string{"base:allocation"}})},
		{nbd.OptSetMetaContext, nbd.AppendMetaRequest(nil, nbd.MetaRequest{Queries: []string{"base:allocation"}})},
		{999, []byte("junk")},
	} {
		cl.opt(o.opt, o.data)
		if h, _ := cl.optReply(); h.Type != nbd.RepErrTLSReqd || h.Option != o.opt {
			t.Fatalf("option %d before STARTTLS: reply %#x for option %d", o.opt, h.Type, h.Option)
		}
	}
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
