// Package nbd serves block.Images over the Network Block Device protocol
// (fixed newstyle handshake, structured replies, base:allocation block
// status, optional TLS). It is what `vdisk serve` runs.
//
// Every byte a client sends is untrusted: lengths are checked before
// anything is allocated, a request never takes more than nbd.MaxPayload of
// memory, and a connection has a bounded number of requests in flight.
package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"vdisk/block"
	"vdisk/nbd"
)

// Export is one image the server offers under a name.
type Export struct {
	Name        string
	Description string
	Image       block.Image

	data dataRange
}

// dataRange remembers one range of an export known to hold data, shared
// by all its connections. It can only go stale towards "data" (a trim or
// zeroing that raced with the lookup), and a read of such a range still
// returns the right bytes, just as a data chunk rather than a hole; the
// generation count keeps even that from outliving the request that
// caused it, as trims and zeroings bump it before and after they run.
type dataRange struct {
	mu     sync.Mutex
	gen    uint64
	lo, hi int64
}

// lookup reports whether [off, off+n) is known to be data, with the
// generation to pass to store.
func (d *dataRange) lookup(off, n int64) (uint64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gen, off >= d.lo && off+n <= d.hi
}

// store records [lo, hi) as data unless the export changed since gen.
func (d *dataRange) store(gen uint64, lo, hi int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.gen != gen {
		return
	}
	if lo >= d.lo && lo <= d.hi {
		d.hi = max(d.hi, hi)
		return
	}
	d.lo, d.hi = lo, hi
}

func (d *dataRange) invalidate() {
	d.mu.Lock()
	d.gen++
	d.lo, d.hi = 0, 0
	d.mu.Unlock()
}

// Server serves a set of exports. Configure the fields, then call Serve
// for each listener. Shutdown stops everything.
type Server struct {
	Exports []*Export
	// TLS, when set, is required: clients must STARTTLS before anything else.
	TLS *tls.Config
	// MaxConns bounds simultaneous connections; 0 means no bound. As
	// qemu-nbd does, Serve stops accepting while every slot is taken, so
	// further clients wait in the listen backlog until one frees;
	// ServeConn, handed a connection already accepted, closes it instead.
	// A Serve loop waiting in accept holds a slot for its next client,
	// which ServeConn cannot take.
	MaxConns int
	// HandshakeTimeout bounds the whole handshake so that a client that
	// stalls cannot hold a connection slot; 0 means 10 seconds.
	HandshakeTimeout time.Duration
	// MaxPayload is the largest READ or WRITE accepted and the maximum
	// block size advertised; 0 means nbd.MaxPayload (32 MiB, as qemu-nbd).
	MaxPayload uint32
	// OnIdle, if set, is called each time the last connection ends.
	OnIdle func()
	// Logf receives diagnostics about misbehaving clients; nil discards them.
	Logf func(format string, args ...any)
	// ShutdownGrace is how long Shutdown lets clients take their leave
	// (the spec's soft disconnect) before it closes their connections; 0
	// means 2 seconds.
	ShutdownGrace time.Duration

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	reserved  int        // slots held by Serve loops about to accept
	slotFreed *sync.Cond // on mu: a connection ended, or Shutdown began
	closed    bool
	shutting  chan struct{} // closed by Shutdown
	wg        sync.WaitGroup
}

// shutdownCh is closed when Shutdown begins.
func (s *Server) shutdownCh() chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutting == nil {
		s.shutting = make(chan struct{})
	}
	return s.shutting
}

func (s *Server) grace() time.Duration {
	if s.ShutdownGrace > 0 {
		return s.ShutdownGrace
	}
	return 2 * time.Second
}

// maxInFlightBytes bounds the request buffers one connection holds at once.
const maxInFlightBytes = 64 << 20

// sendBuffer is the socket send buffer asked for in transmission.
const sendBuffer = 4 << 20

// maxInFlight bounds the requests one connection has in progress at once.
const maxInFlight = 32

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
	}
}

// Serve accepts connections on l until Shutdown or an accept error that
// is not passing.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = map[net.Listener]struct{}{}
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		if !s.reserve() {
			return ErrServerClosed
		}
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			s.reserved--
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if !passing(err) {
				return err
			}
			// Out of file descriptors, buffers or memory, or a client
			// that gave up before it was accepted: the server must keep
			// going, as net/http's does, without spinning meanwhile.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.logf("nbd: accept: %v; retrying in %v", err, backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !s.track(c, true) {
			c.Close()
			continue
		}
		go s.serveConn(c)
	}
}

// passing reports whether an accept error is worth waiting out.
func passing(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// reserve waits for a free connection slot and holds it for the next
// accept; it reports false once the server is closed. Not accepting at
// all while full is what qemu-nbd does: a client over the limit waits
// for a slot instead of being hung up on.
func (s *Server) reserve() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slotFreed == nil {
		s.slotFreed = sync.NewCond(&s.mu)
	}
	for !s.closed && s.MaxConns > 0 && len(s.conns)+s.reserved >= s.MaxConns {
		s.slotFreed.Wait()
	}
	if s.closed {
		return false
	}
	s.reserved++
	return true
}

// track registers a new connection, taking the slot reserve held for it
// or refusing it over the limit, where the slots Serve loops hold for the
// clients they are about to accept count as taken.
func (s *Server) track(c net.Conn, reserved bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reserved {
		s.reserved--
	}
	if s.closed || (!reserved && s.MaxConns > 0 && len(s.conns)+s.reserved >= s.MaxConns) {
		s.logf("nbd: refusing connection from %s: too many connections", c.RemoteAddr())
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	idle := len(s.conns) == 0 && !s.closed
	if s.slotFreed != nil {
		s.slotFreed.Broadcast()
	}
	s.mu.Unlock()
	s.wg.Done()
	if idle && s.OnIdle != nil {
		s.OnIdle()
	}
}

// ServeConn serves one already-accepted connection and returns when it
// ends. It counts against MaxConns like an accepted one.
func (s *Server) ServeConn(c net.Conn) {
	if !s.track(c, false) {
		c.Close()
		return
	}
	s.serveConn(c)
}

// Shutdown closes the listeners and disconnects every client softly, as
// the NBD spec asks of a server going away: requests in progress finish
// and are answered, later ones get NBD_ESHUTDOWN, and a connection ends
// when its client disconnects or the grace period runs out. Shutdown
// returns when every connection has ended.
func (s *Server) Shutdown() {
	shut := s.shutdownCh()
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(shut)
	}
	if s.slotFreed != nil {
		s.slotFreed.Broadcast()
	}
	for l := range s.listeners {
		l.Close()
	}
	deadline := time.Now().Add(s.grace())
	for c := range s.conns {
		// Wakes a read loop waiting for the next request at the deadline.
		c.SetReadDeadline(deadline)
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(time.Until(deadline) + 100*time.Millisecond):
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-done
}

func (s *Server) maxPayload() uint32 {
	if s.MaxPayload == 0 || s.MaxPayload > nbd.MaxPayload {
		return nbd.MaxPayload
	}
	return s.MaxPayload
}

func (s *Server) export(name string) *Export {
	for _, e := range s.Exports {
		if e.Name == name {
			return e
		}
	}
	return nil
}

func (s *Server) serveConn(raw net.Conn) {
	defer s.untrack(raw)
	defer raw.Close()
	timeout := s.HandshakeTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	raw.SetDeadline(time.Now().Add(timeout))
	h := &handshake{srv: s, c: raw}
	c, err := h.run()
	if err != nil {
		if !errors.Is(err, errAbort) && !errors.Is(err, io.EOF) {
			s.logf("nbd: %s: handshake: %v", raw.RemoteAddr(), err)
		}
		if h.conn != nil && h.conn != raw {
			h.conn.Close()
		}
		return
	}
	raw.SetDeadline(time.Time{})
	select {
	case <-s.shutdownCh():
		// Shutdown began during the handshake: its deadline was just
		// cleared.
		raw.SetReadDeadline(time.Now().Add(s.grace()))
	default:
	}
	if wb, ok := raw.(interface{ SetWriteBuffer(int) error }); ok {
		// A read reply (up to 32 MiB) rarely fits the default socket
		// buffer (208 KiB); each time it fills, the sender parks and waits
		// for the poller. The kernel caps this at net.core.wmem_max.
		wb.SetWriteBuffer(sendBuffer)
	}
	if err := c.serve(); err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		s.logf("nbd: %s: %v", raw.RemoteAddr(), err)
	}
	c.conn.Close()
}

var errAbort = errors.New("client aborted the handshake")

// handshake is the option haggling phase of one connection.
type handshake struct {
	srv        *Server
	c          net.Conn
	conn       net.Conn // c, or the TLS connection over it
	noZeroes   bool
	tls        bool
	structured bool
	metaSet    bool // SET_META_CONTEXT selected base:allocation
	metaExport string
}

func (h *handshake) write(b []byte) error {
	_, err := h.conn.Write(b)
	return err
}

func (h *handshake) reply(opt, typ uint32, data []byte) error {
	return h.write(nbd.AppendOptReply(nil, opt, typ, data))
}

func (h *handshake) replyErr(opt, typ uint32, msg string) error {
	return h.reply(opt, typ, []byte(msg))
}

func (h *handshake) run() (*conn, error) {
	h.conn = h.c
	hello := binary.BigEndian.AppendUint64(nil, nbd.Magic)
	hello = binary.BigEndian.AppendUint64(hello, nbd.OptMagic)
	hello = binary.BigEndian.AppendUint16(hello, nbd.FlagFixedNewstyle|nbd.FlagNoZeroes)
	if err := h.write(hello); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(h.conn, cf[:]); err != nil {
		return nil, err
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&nbd.ClientFlagFixedNewstyle == 0 {
		return nil, errors.New("client does not support fixed newstyle")
	}
	if flags&^(nbd.ClientFlagFixedNewstyle|nbd.ClientFlagNoZeroes) != 0 {
		return nil, fmt.Errorf("unknown client flags %#x", flags)
	}
	h.noZeroes = flags&nbd.ClientFlagNoZeroes != 0

	var hdr [nbd.OptHeaderSize]byte
	for {
		if _, err := io.ReadFull(h.conn, hdr[:]); err != nil {
			return nil, err
		}
		oh, err := nbd.ParseOptHeader(hdr[:])
		if err != nil {
			return nil, err
		}
		if oh.Length > nbd.MaxOptionLength {
			// Draining gigabytes to stay in sync is not worth it: the
			// spec lets the server drop such a client.
			return nil, fmt.Errorf("option %d with %d bytes of data", oh.Option, oh.Length)
		}
		data := make([]byte, oh.Length)
		if _, err := io.ReadFull(h.conn, data); err != nil {
			return nil, err
		}
		if h.shuttingDown() && oh.Option != nbd.OptAbort {
			// The spec asks a server going away to refuse further options
			// so that the client disconnects softly; EXPORT_NAME has no
			// error reply, so that client is hung up on.
			if oh.Option == nbd.OptExportName {
				return nil, errors.New("NBD_OPT_EXPORT_NAME during shutdown")
			}
			if err := h.replyErr(oh.Option, nbd.RepErrShutdown, "server is shutting down"); err != nil {
				return nil, err
			}
			continue
		}
		if h.srv.TLS != nil && !h.tls && oh.Option != nbd.OptStartTLS && oh.Option != nbd.OptAbort {
			if oh.Option == nbd.OptExportName {
				return nil, errors.New("NBD_OPT_EXPORT_NAME before TLS")
			}
			if err := h.replyErr(oh.Option, nbd.RepErrTLSReqd, "TLS is required"); err != nil {
				return nil, err
			}
			continue
		}
		c, err := h.option(oh.Option, data)
		if err != nil || c != nil {
			return c, err
		}
	}
}

func (h *handshake) shuttingDown() bool {
	select {
	case <-h.srv.shutdownCh():
		return true
	default:
		return false
	}
}

// option handles one option; a non-nil conn means transmission starts.
func (h *handshake) option(opt uint32, data []byte) (*conn, error) {
	switch opt {
	case nbd.OptAbort:
		h.reply(opt, nbd.RepAck, nil)
		return nil, errAbort

	case nbd.OptExportName:
		e := h.srv.export(string(data))
		if e == nil {
			return nil, fmt.Errorf("unknown export %q", data)
		}
		c := h.newConn(e)
		b := binary.BigEndian.AppendUint64(nil, uint64(e.Image.Size()))
		b = binary.BigEndian.AppendUint16(b, c.flags)
		if !h.noZeroes {
			b = append(b, make([]byte, 124)...)
		}
		return c, h.write(b)

	case nbd.OptList:
		if len(data) != 0 {
			return nil, h.replyErr(opt, nbd.RepErrInvalid, "NBD_OPT_LIST with data")
		}
		for _, e := range h.srv.Exports {
			b := binary.BigEndian.AppendUint32(nil, uint32(len(e.Name)))
			b = append(b, e.Name...)
			b = append(b, e.Description...)
			if err := h.reply(opt, nbd.RepServer, b); err != nil {
				return nil, err
			}
		}
		return nil, h.reply(opt, nbd.RepAck, nil)

	case nbd.OptStartTLS:
		if len(data) != 0 {
			return nil, h.replyErr(opt, nbd.RepErrInvalid, "NBD_OPT_STARTTLS with data")
		}
		if h.srv.TLS == nil {
			return nil, h.replyErr(opt, nbd.RepErrPolicy, "TLS is not configured")
		}
		if h.tls {
			return nil, h.replyErr(opt, nbd.RepErrInvalid, "TLS is already active")
		}
		if err := h.reply(opt, nbd.RepAck, nil); err != nil {
			return nil, err
		}
		tc := tls.Server(h.c, h.srv.TLS)
		h.conn = tc
		if err := tc.Handshake(); err != nil {
			return nil, fmt.Errorf("TLS: %w", err)
		}
		h.tls = true
		return nil, nil

	case nbd.OptInfo, nbd.OptGo:
		req, err := nbd.ParseInfoRequest(data)
		if err != nil {
			return nil, h.replyErr(opt, nbd.RepErrInvalid, err.Error())
		}
		e := h.srv.export(req.Name)
		if e == nil {
			return nil, h.replyErr(opt, nbd.RepErrUnknown, fmt.Sprintf("export '%s' not present", req.Name))
		}
		c := h.newConn(e)
		if err := h.reply(opt, nbd.RepInfo, nbd.AppendInfoExport(nil, uint64(e.Image.Size()), c.flags)); err != nil {
			return nil, err
		}
		for _, i := range req.Infos {
			var b []byte
			switch i {
			case nbd.InfoName:
				b = nbd.AppendInfoString(nil, nbd.InfoName, e.Name)
			case nbd.InfoDescription:
				if e.Description == "" {
					continue
				}
				b = nbd.AppendInfoString(nil, nbd.InfoDescription, e.Description)
			default:
				continue
			}
			if err := h.reply(opt, nbd.RepInfo, b); err != nil {
				return nil, err
			}
		}
		// Block sizes go out whether asked for or not: a minimum of 1
		// constrains nobody, and clients learn the payload limit.
		if err := h.reply(opt, nbd.RepInfo, nbd.AppendInfoBlockSize(nil, 1, nbd.PreferredBlockSize, h.srv.maxPayload())); err != nil {
			return nil, err
		}
		if err := h.reply(opt, nbd.RepAck, nil); err != nil {
			return nil, err
		}
		if opt == nbd.OptGo {
			return c, nil
		}
		return nil, nil

	case nbd.OptStructuredReply:
		if len(data) != 0 {
			return nil, h.replyErr(opt, nbd.RepErrInvalid, "NBD_OPT_STRUCTURED_REPLY with data")
		}
		h.structured = true
		return nil, h.reply(opt, nbd.RepAck, nil)

	case nbd.OptListMetaContext, nbd.OptSetMetaContext:
		return nil, h.metaContext(opt, data)
	}
	return nil, h.replyErr(opt, nbd.RepErrUnsup, fmt.Sprintf("option %d not supported", opt))
}

// metaContextID is the id vdisk gives base:allocation.
const metaContextID = 1

func (h *handshake) metaContext(opt uint32, data []byte) error {
	if !h.structured {
		return h.replyErr(opt, nbd.RepErrInvalid, "structured replies not negotiated")
	}
	req, err := nbd.ParseMetaRequest(data)
	if err != nil {
		return h.replyErr(opt, nbd.RepErrInvalid, err.Error())
	}
	if h.srv.export(req.Export) == nil {
		return h.replyErr(opt, nbd.RepErrUnknown, fmt.Sprintf("export '%s' not present", req.Export))
	}
	match := false
	if opt == nbd.OptListMetaContext && len(req.Queries) == 0 {
		match = true
	}
	for _, q := range req.Queries {
		if q == nbd.MetaBaseAllocation || (opt == nbd.OptListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == nbd.OptSetMetaContext {
		h.metaSet = match
		h.metaExport = req.Export
	}
	if match {
		// The spec reserves the id in LIST replies and asks for zero, as
		// qemu-nbd sends; only SET gives the context its id.
		id := uint32(0)
		if opt == nbd.OptSetMetaContext {
			id = metaContextID
		}
		b := binary.BigEndian.AppendUint32(nil, id)
		b = append(b, nbd.MetaBaseAllocation...)
		if err := h.reply(opt, nbd.RepMetaContext, b); err != nil {
			return err
		}
	}
	return h.reply(opt, nbd.RepAck, nil)
}

func (h *handshake) newConn(e *Export) *conn {
	ro := e.Image.ReadOnly()
	flags := nbd.FlagHasFlags | nbd.FlagSendFlush | nbd.FlagSendFUA | nbd.FlagSendCache
	// One Image object serves every connection, so a flush on any of them
	// covers writes completed on all: the image is consistent across
	// connections. With a limit of one connection, advertising it would
	// only invite clients (nbdcopy) to open connections that are refused.
	if h.srv.MaxConns != 1 {
		flags |= nbd.FlagCanMultiConn
	}
	if ro {
		flags |= nbd.FlagReadOnly
	} else {
		flags |= nbd.FlagSendTrim | nbd.FlagSendWriteZeroes | nbd.FlagSendFastZero
	}
	if h.structured {
		flags |= nbd.FlagSendDF
	}
	c := &conn{
		srv:        h.srv,
		conn:       h.conn,
		exp:        e,
		flags:      flags,
		structured: h.structured,
		meta:       h.metaSet && h.metaExport == e.Name,
		readOnly:   ro,
	}
	c.budgetCond = sync.NewCond(&c.budgetMu)
	return c
}

// bufPool recycles request payload buffers; sizes vary, so buffers are
// pooled by power-of-two class.
var bufPools [26]sync.Pool // up to 32 MiB (2^25)

func getBuf(n int) *[]byte {
	if n == 0 {
		b := []byte{}
		return &b
	}
	class := 0
	for (1 << class) < n {
		class++
	}
	if class < 12 {
		class = 12
	}
	if p, ok := bufPools[class].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<class)
	return &b
}

func putBuf(p *[]byte) {
	c := cap(*p)
	if c == 0 || c&(c-1) != 0 {
		return
	}
	class := 0
	for (1 << class) < c {
		class++
	}
	if class < len(bufPools) {
		bufPools[class].Put(p)
	}
}

// newReader buffers request headers; payloads of any size pass through.
func newReader(c net.Conn) *bufio.Reader { return bufio.NewReaderSize(c, 64<<10) }
