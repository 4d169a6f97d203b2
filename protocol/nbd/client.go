// Package nbd is the NBD client protocol: it opens nbd://, nbd+unix://,
// nbds:// and nbds+unix:// URIs as block.Files, so that any format driver
// can sit on an NBD export (as QEMU's nbd block driver does).
//
// URIs (the NBD URI standard, as qemu and libnbd use it):
//
//	nbd://HOST[:PORT]/EXPORT
//	nbd+unix:///EXPORT?socket=PATH
//	nbds://HOST[:PORT]/EXPORT?tls-ca=CA.pem[&tls-cert=C.pem&tls-key=K.pem]
//	nbds+unix:///EXPORT?socket=PATH&tls-ca=...&tls-hostname=NAME
//
// For the TLS forms the CA, client certificate and key may also come from
// the environment: VDISK_NBD_TLS_CA, VDISK_NBD_TLS_CERT, VDISK_NBD_TLS_KEY.
// Without a CA the system roots verify the server. The server's name is
// checked against HOST, or tls-hostname (default "localhost" over a Unix
// socket).
//
// The server is not trusted: every reply length is checked against the
// request it answers, and a reply that does not fit closes the connection.
package nbd

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"vdisk/block"
	"vdisk/nbd"
)

func init() {
	block.RegisterProtocol(&block.Protocol{Name: "nbd", Match: Match, Open: open})
}

// Match reports whether name is an NBD URI.
func Match(name string) bool {
	for _, s := range []string{"nbd://", "nbd+unix://", "nbds://", "nbds+unix://", "nbd+tcp://", "nbds+tcp://"} {
		if strings.HasPrefix(name, s) {
			return true
		}
	}
	return false
}

func open(name string, flags block.OpenFlags) (block.File, error) {
	if flags.Create {
		return nil, fmt.Errorf("%s: cannot create an image on an NBD export; create it on the server", name)
	}
	c, err := Dial(name)
	if err != nil {
		return nil, err
	}
	if !flags.ReadOnly && c.flags&nbd.FlagReadOnly != 0 {
		c.Close()
		return nil, fmt.Errorf("%s: export is read-only", name)
	}
	return c, nil
}

// Target is a parsed NBD URI.
type Target struct {
	Network, Address string // "tcp"/"unix" and host:port or socket path
	Export           string
	TLS              bool
	CA, Cert, Key    string
	ServerName       string
}

// ParseURI parses an NBD URI.
func ParseURI(name string) (*Target, error) {
	u, err := url.Parse(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	t := &Target{Export: strings.TrimPrefix(u.Path, "/")}
	q := u.Query()
	switch u.Scheme {
	case "nbd", "nbd+tcp", "nbds", "nbds+tcp":
		t.Network = "tcp"
		host, port := u.Hostname(), u.Port()
		if host == "" {
			host = "localhost"
		}
		if port == "" {
			port = strconv.Itoa(nbd.DefaultPort)
		}
		t.Address = net.JoinHostPort(host, port)
		t.ServerName = host
	case "nbd+unix", "nbds+unix":
		t.Network = "unix"
		t.Address = q.Get("socket")
		if t.Address == "" {
			return nil, fmt.Errorf("%s: nbd+unix URI needs ?socket=PATH", name)
		}
		if u.Host != "" {
			return nil, fmt.Errorf("%s: nbd+unix URI must not name a host", name)
		}
		t.ServerName = "localhost"
	default:
		return nil, fmt.Errorf("%s: not an NBD URI", name)
	}
	t.TLS = strings.HasPrefix(u.Scheme, "nbds")
	env := func(key, param string) string {
		if v := q.Get(param); v != "" {
			return v
		}
		return os.Getenv(key)
	}
	if t.TLS {
		t.CA = env("VDISK_NBD_TLS_CA", "tls-ca")
		t.Cert = env("VDISK_NBD_TLS_CERT", "tls-cert")
		t.Key = env("VDISK_NBD_TLS_KEY", "tls-key")
		if h := q.Get("tls-hostname"); h != "" {
			t.ServerName = h
		}
	}
	return t, nil
}

func (t *Target) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{ServerName: t.ServerName, MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls-ca %s: no certificates found", t.CA)
		}
		cfg.RootCAs = pool
	}
	if t.Cert != "" || t.Key != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Client is a connection to one export. It implements block.File and the
// HolePuncher, ZeroRanger and DataMapper capabilities. Requests from many
// goroutines are multiplexed on the one connection by cookie.
type Client struct {
	name       string
	conn       net.Conn
	size       int64
	flags      uint16
	structured bool
	metaID     uint32
	hasMeta    bool
	// The server's block size constraints (NBD_INFO_BLOCK_SIZE), which
	// the client promised to honour by asking for them in NBD_OPT_GO:
	// every offset and length a multiple of minBlock, READ and WRITE at
	// most maxPayload, WRITE_ZEROES and TRIM at most maxLength.
	minBlock   int64
	maxPayload int64
	maxLength  int64
	// rmw keeps read-modify-write cycles apart from every other write
	// they overlap (only needed when minBlock > 1).
	rmw rangeLock

	wmu sync.Mutex

	mu      sync.Mutex
	pending map[uint64]*call
	cookie  uint64
	err     error // set once the connection is unusable

	closeOnce sync.Once
	readerEnd chan struct{}
}

// call is one request waiting for its reply.
type call struct {
	req     nbd.Request
	buf     []byte // READ destination
	covered int64  // READ bytes filled by chunks
	descs   []nbd.Descriptor
	status  bool // a block status chunk for our context came
	errno   uint32
	msg     string
	err     error // transport failure
	done    chan struct{}
}

// maxOptReply bounds an option reply from the server.
const maxOptReply = 64 << 10

// maxBlockStatusReply bounds a block status chunk (qemu-nbd sends at
// most 1 MiB of descriptors).
const maxBlockStatusReply = 4 + 8<<20

// Dial connects to the export an NBD URI names.
func Dial(name string) (*Client, error) {
	t, err := ParseURI(name)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout(t.Network, t.Address, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c := &Client{name: name, conn: conn, pending: map[uint64]*call{}, readerEnd: make(chan struct{}),
		minBlock: 1, maxPayload: nbd.MaxPayload, maxLength: bigStep}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.handshake(t); err != nil {
		c.conn.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	// A last block the export holds only in part cannot be read or
	// written: the server refuses requests that do not cover whole
	// blocks, and the export ends within this one. So the export ends
	// at the last whole block, and every request stays aligned.
	c.size = alignDown(c.size, c.minBlock)
	c.conn.SetDeadline(time.Time{})
	go c.readLoop()
	return c, nil
}

func (c *Client) handshake(t *Target) error {
	var hello [18]byte
	if _, err := io.ReadFull(c.conn, hello[:]); err != nil {
		return fmt.Errorf("reading server greeting: %w", err)
	}
	be := binary.BigEndian
	if be.Uint64(hello[:]) != nbd.Magic {
		return errors.New("not an NBD server")
	}
	if be.Uint64(hello[8:]) != nbd.OptMagic {
		return errors.New("server speaks the oldstyle protocol, which is not supported")
	}
	sflags := be.Uint16(hello[16:])
	if sflags&nbd.FlagFixedNewstyle == 0 {
		return errors.New("server does not support the fixed newstyle handshake")
	}
	cflags := nbd.ClientFlagFixedNewstyle
	noZeroes := sflags&nbd.FlagNoZeroes != 0
	if noZeroes {
		cflags |= nbd.ClientFlagNoZeroes
	}
	if _, err := c.conn.Write(be.AppendUint32(nil, cflags)); err != nil {
		return err
	}
	if t.TLS {
		cfg, err := t.tlsConfig()
		if err != nil {
			return err
		}
		typ, data, err := c.option(nbd.OptStartTLS, nil)
		if err != nil {
			return err
		}
		if typ != nbd.RepAck {
			return fmt.Errorf("server refused TLS: %s", repErr(typ, data))
		}
		tc := tls.Client(c.conn, cfg)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("TLS handshake: %w", err)
		}
		c.conn = tc
	}
	typ, _, err := c.option(nbd.OptStructuredReply, nil)
	if err != nil {
		return err
	}
	c.structured = typ == nbd.RepAck
	if c.structured {
		req := nbd.AppendMetaRequest(nil, nbd.MetaRequest{Export: t.Export, Queries: []string{nbd.MetaBaseAllocation}})
		if err := c.send(nbd.OptSetMetaContext, req); err != nil {
			return err
		}
		for {
			typ, data, err := c.optReply(nbd.OptSetMetaContext)
			if err != nil {
				return err
			}
			if typ == nbd.RepMetaContext && len(data) >= 4 && string(data[4:]) == nbd.MetaBaseAllocation {
				c.metaID, c.hasMeta = be.Uint32(data), true
			}
			if typ == nbd.RepAck || nbd.IsRepErr(typ) {
				break
			}
		}
	}
	info := nbd.AppendInfoRequest(nil, nbd.InfoRequest{Name: t.Export, Infos: []uint16{nbd.InfoBlockSize}})
	if err := c.send(nbd.OptGo, info); err != nil {
		return err
	}
	gotExport := false
	for {
		typ, data, err := c.optReply(nbd.OptGo)
		if err != nil {
			return err
		}
		if typ == nbd.RepErrUnsup {
			return c.exportName(t.Export, noZeroes)
		}
		if nbd.IsRepErr(typ) {
			return fmt.Errorf("export '%s': %s", t.Export, repErr(typ, data))
		}
		if typ == nbd.RepAck {
			if !gotExport {
				return errors.New("server sent no export information")
			}
			return nil
		}
		if typ != nbd.RepInfo || len(data) < 2 {
			continue
		}
		switch be.Uint16(data) {
		case nbd.InfoExport:
			if len(data) != 12 {
				return errors.New("malformed NBD_INFO_EXPORT")
			}
			if err := c.setSize(be.Uint64(data[2:])); err != nil {
				return err
			}
			c.flags = be.Uint16(data[10:])
			gotExport = true
		case nbd.InfoBlockSize:
			if len(data) != 14 {
				return errors.New("malformed NBD_INFO_BLOCK_SIZE")
			}
			if err := c.setBlockSizes(be.Uint32(data[2:]), be.Uint32(data[6:]), be.Uint32(data[10:])); err != nil {
				return err
			}
		}
	}
}

func (c *Client) setSize(size uint64) error {
	if size > 1<<62 {
		return fmt.Errorf("export size %d is not believable", size)
	}
	c.size = int64(size)
	return nil
}

// exportName is the fallback for servers without NBD_OPT_GO.
func (c *Client) exportName(export string, noZeroes bool) error {
	if err := c.send(nbd.OptExportName, []byte(export)); err != nil {
		return err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(c.conn, b); err != nil {
		return fmt.Errorf("export '%s': server closed the connection (no such export?)", export)
	}
	if err := c.setSize(binary.BigEndian.Uint64(b)); err != nil {
		return err
	}
	c.flags = binary.BigEndian.Uint16(b[8:])
	return nil
}

func (c *Client) send(opt uint32, data []byte) error {
	_, err := c.conn.Write(nbd.AppendOpt(nil, opt, data))
	return err
}

// option sends an option that expects exactly one reply.
func (c *Client) option(opt uint32, data []byte) (uint32, []byte, error) {
	if err := c.send(opt, data); err != nil {
		return 0, nil, err
	}
	return c.optReply(opt)
}

func (c *Client) optReply(opt uint32) (uint32, []byte, error) {
	var hdr [nbd.OptReplyHeaderSize]byte
	if _, err := io.ReadFull(c.conn, hdr[:]); err != nil {
		return 0, nil, fmt.Errorf("reading option reply: %w", err)
	}
	h, err := nbd.ParseOptReplyHeader(hdr[:])
	if err != nil {
		return 0, nil, err
	}
	if h.Option != opt {
		return 0, nil, fmt.Errorf("server answered option %d when asked %d", h.Option, opt)
	}
	if h.Length > maxOptReply {
		return 0, nil, fmt.Errorf("option reply of %d bytes", h.Length)
	}
	data := make([]byte, h.Length)
	if _, err := io.ReadFull(c.conn, data); err != nil {
		return 0, nil, fmt.Errorf("reading option reply: %w", err)
	}
	return h.Type, data, nil
}

func repErr(typ uint32, data []byte) string {
	names := map[uint32]string{
		nbd.RepErrUnsup: "unsupported", nbd.RepErrPolicy: "refused by policy", nbd.RepErrInvalid: "invalid",
		nbd.RepErrPlatform: "not supported on this platform", nbd.RepErrTLSReqd: "TLS required",
		nbd.RepErrUnknown: "unknown export", nbd.RepErrShutdown: "server shutting down",
		nbd.RepErrBlockSizeReqd: "block size required", nbd.RepErrTooBig: "too big",
	}
	s := names[typ]
	if s == "" {
		s = fmt.Sprintf("error %#x", typ)
	}
	if len(data) > 0 {
		s += ": " + strings.ToValidUTF8(string(data), "?")
	}
	return s
}

// abort makes the connection unusable; the read loop then sees the
// connection fail and fails every pending request itself, so no buffer is
// written after its request has returned.
func (c *Client) abort(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.mu.Unlock()
	c.conn.Close()
}

// fail, called by the read loop only, fails every pending request.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	pend := c.pending
	c.pending = map[uint64]*call{}
	c.mu.Unlock()
	c.conn.Close()
	for _, cl := range pend {
		cl.err = err
		close(cl.done)
	}
}

// readLoop receives replies and hands each to its request.
func (c *Client) readLoop() {
	defer close(c.readerEnd)
	r := newReader(c.conn)
	var hdr [nbd.StructuredReplySize]byte
	for {
		if _, err := io.ReadFull(r, hdr[:4]); err != nil {
			c.fail(fmt.Errorf("%s: connection lost: %w", c.name, err))
			return
		}
		size, err := nbd.ParseReplyMagic(hdr[:4])
		if err == nil {
			_, err = io.ReadFull(r, hdr[4:size])
		}
		var h nbd.ReplyHeader
		if err == nil {
			h, err = nbd.ParseReply(hdr[:size])
		}
		if err == nil {
			err = c.dispatch(r, h)
		}
		if err != nil {
			c.fail(fmt.Errorf("%s: %w", c.name, err))
			return
		}
	}
}

func (c *Client) lookup(cookie uint64) *call {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pending[cookie]
}

func (c *Client) finish(cl *call) {
	c.mu.Lock()
	mine := c.pending[cl.req.Cookie] == cl
	delete(c.pending, cl.req.Cookie)
	c.mu.Unlock()
	if mine {
		close(cl.done)
	}
}

func (c *Client) dispatch(r io.Reader, h nbd.ReplyHeader) error {
	cl := c.lookup(h.Cookie)
	if cl == nil {
		return fmt.Errorf("reply for unknown request %#x", h.Cookie)
	}
	if !h.Structured {
		cl.errno = h.Error
		if h.Error == 0 && cl.req.Type == nbd.CmdRead {
			if _, err := io.ReadFull(r, cl.buf); err != nil {
				return err
			}
			cl.covered = int64(len(cl.buf))
		}
		c.finish(cl)
		return nil
	}
	be := binary.BigEndian
	switch {
	case h.Type == nbd.ReplyTypeNone:
		if h.Length != 0 || h.Flags&nbd.ReplyFlagDone == 0 {
			return errors.New("malformed NBD_REPLY_TYPE_NONE")
		}
	case h.Type == nbd.ReplyTypeOffsetData:
		if cl.req.Type != nbd.CmdRead || h.Length < 8 || int64(h.Length-8) > int64(len(cl.buf)) {
			return fmt.Errorf("data chunk of %d bytes for a %d byte %s", h.Length, len(cl.buf), nbd.CmdName(cl.req.Type))
		}
		var ob [8]byte
		if _, err := io.ReadFull(r, ob[:]); err != nil {
			return err
		}
		pos, n := be.Uint64(ob[:])-cl.req.Offset, int64(h.Length-8)
		if be.Uint64(ob[:]) < cl.req.Offset || pos > uint64(len(cl.buf)) || n > int64(len(cl.buf))-int64(pos) {
			return errors.New("data chunk outside the requested range")
		}
		if _, err := io.ReadFull(r, cl.buf[pos:int64(pos)+n]); err != nil {
			return err
		}
		cl.covered += n
	case h.Type == nbd.ReplyTypeOffsetHole:
		if cl.req.Type != nbd.CmdRead || h.Length != 12 {
			return errors.New("malformed hole chunk")
		}
		var b [12]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return err
		}
		off, n := be.Uint64(b[:]), uint64(be.Uint32(b[8:]))
		pos := off - cl.req.Offset
		if off < cl.req.Offset || pos > uint64(len(cl.buf)) || n > uint64(len(cl.buf))-pos {
			return errors.New("hole chunk outside the requested range")
		}
		clear(cl.buf[pos : pos+n])
		cl.covered += int64(n)
	case h.Type == nbd.ReplyTypeBlockStatus:
		if cl.req.Type != nbd.CmdBlockStatus || h.Length > maxBlockStatusReply {
			return fmt.Errorf("block status chunk of %d bytes", h.Length)
		}
		b := make([]byte, h.Length)
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		id, ds, err := nbd.ParseBlockStatus(b)
		if err != nil {
			return err
		}
		if id == c.metaID {
			// The spec allows one chunk per context; more would let a
			// server grow this list without bound.
			if cl.status {
				return errors.New("a second block status chunk for one context")
			}
			cl.descs, cl.status = ds, true
		}
	case nbd.IsReplyError(h.Type):
		if h.Length < 6 || h.Length > 6+nbd.MaxString+8 {
			return fmt.Errorf("error chunk of %d bytes", h.Length)
		}
		b := make([]byte, h.Length)
		if _, err := io.ReadFull(r, b); err != nil {
			return err
		}
		e, msg, err := nbd.ParseErrorChunk(b)
		if err != nil {
			return err
		}
		if e == 0 {
			e = nbd.EIO
		}
		cl.errno, cl.msg = e, strings.ToValidUTF8(msg, "?")
	default:
		// An unknown non-error chunk may be skipped, if it is small.
		if h.Length > maxOptReply {
			return fmt.Errorf("unknown chunk type %d of %d bytes", h.Type, h.Length)
		}
		if _, err := io.CopyN(io.Discard, r, int64(h.Length)); err != nil {
			return err
		}
	}
	if h.Flags&nbd.ReplyFlagDone != 0 {
		c.finish(cl)
	}
	return nil
}

// start sends a request and returns the call to wait on.
func (c *Client) start(typ, flags uint16, off int64, length uint32, payload, buf []byte) (*call, error) {
	cl := &call{done: make(chan struct{}), buf: buf}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.cookie++
	cl.req = nbd.Request{Flags: flags, Type: typ, Cookie: c.cookie, Offset: uint64(off), Length: length}
	c.pending[cl.req.Cookie] = cl
	c.mu.Unlock()
	hdr := nbd.AppendRequest(make([]byte, 0, nbd.RequestSize), cl.req)
	bufs := net.Buffers{hdr}
	if payload != nil {
		bufs = append(bufs, payload)
	}
	c.wmu.Lock()
	_, err := bufs.WriteTo(c.conn)
	c.wmu.Unlock()
	if err != nil {
		c.abort(fmt.Errorf("%s: sending request: %w", c.name, err))
	}
	return cl, nil
}

func (c *Client) wait(cl *call) error {
	<-cl.done
	if cl.err != nil {
		return cl.err
	}
	if cl.errno != 0 {
		msg := nbd.ErrnoString(cl.errno)
		if cl.msg != "" {
			msg = cl.msg + " (" + msg + ")"
		}
		err := fmt.Errorf("%s: %s at %d+%d: %s", c.name, nbd.CmdName(cl.req.Type), cl.req.Offset, cl.req.Length, msg)
		if cl.errno == nbd.ENOTSUP {
			err = fmt.Errorf("%w: %w", block.ErrNotSupported, err)
		}
		return err
	}
	if cl.req.Type == nbd.CmdRead && cl.covered != int64(len(cl.buf)) {
		return fmt.Errorf("%s: READ at %d+%d: server sent %d bytes", c.name, cl.req.Offset, cl.req.Length, cl.covered)
	}
	return nil
}

// Name is the URI the client was opened with.
func (c *Client) Name() string { return c.name }

// Size is the export's size.
func (c *Client) Size() (int64, error) { return c.size, nil }

// ReadOnly reports whether the server exports read-only.
func (c *Client) ReadOnly() bool { return c.flags&nbd.FlagReadOnly != 0 }

// ReadAt reads like a file: a read past the end is short, with io.EOF.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: negative offset", c.name)
	}
	if off >= c.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := min(int64(len(p)), c.size-off)
	if err := c.read(p[:n], off); err != nil {
		return 0, err
	}
	if n < int64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// WriteAt writes within the export; it cannot grow.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	if err := c.checkWrite(off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := c.write(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *Client) checkWrite(off, n int64) error {
	if c.flags&nbd.FlagReadOnly != 0 {
		return fmt.Errorf("%s: %w", c.name, block.ErrReadOnly)
	}
	if off < 0 || n < 0 || off > c.size || n > c.size-off {
		return fmt.Errorf("%s: %w: offset %d length %d, export size %d", c.name, block.ErrOutOfRange, off, n, c.size)
	}
	return nil
}

// Truncate only accepts the current size: an export cannot change size.
func (c *Client) Truncate(size int64) error {
	if size == c.size {
		return nil
	}
	return fmt.Errorf("%s: cannot resize an NBD export (size %d, asked %d): %w", c.name, c.size, size, block.ErrNotSupported)
}

// Sync is NBD_CMD_FLUSH.
func (c *Client) Sync() error {
	if c.flags&nbd.FlagSendFlush == 0 {
		return nil
	}
	cl, err := c.start(nbd.CmdFlush, 0, 0, 0, nil, nil)
	if err != nil {
		return err
	}
	return c.wait(cl)
}

// bigStep bounds the length of a command without payload.
const bigStep = 1 << 30

// PunchHole frees the range and makes it read as zeros. NBD_CMD_TRIM
// cannot do it: trim is advisory (qemu-nbd ignores it unless told
// --discard=unmap) and promises nothing about the content afterwards. So
// it is NBD_CMD_WRITE_ZEROES without NO_HOLE, which lets the server
// punch the hole and guarantees the zeros; Trim is the bare hint.
func (c *Client) PunchHole(off, n int64) error {
	if c.flags&nbd.FlagSendWriteZeroes == 0 {
		return block.ErrNotSupported
	}
	if err := c.checkWrite(off, n); err != nil {
		return err
	}
	return c.zero(0, off, n)
}

// Trim is NBD_CMD_TRIM: the server may free the range; its content is
// undefined afterwards.
func (c *Client) Trim(off, n int64) error {
	if c.flags&nbd.FlagSendTrim == 0 {
		return nil
	}
	if err := c.checkWrite(off, n); err != nil {
		return err
	}
	// A hint need not cover the blocks only partly in the range.
	lo, hi := alignUp(off, c.minBlock), alignDown(off+n, c.minBlock)
	if lo >= hi {
		return nil
	}
	defer c.rmw.lock(c.minBlock > 1, lo, hi, false)()
	return c.split(nbd.CmdTrim, 0, lo, hi-lo, c.maxLength, nil)
}

// ZeroRange is NBD_CMD_WRITE_ZEROES keeping the space allocated.
func (c *Client) ZeroRange(off, n int64) error {
	if c.flags&nbd.FlagSendWriteZeroes == 0 {
		return block.ErrNotSupported
	}
	if err := c.checkWrite(off, n); err != nil {
		return err
	}
	return c.zero(nbd.CmdFlagNoHole, off, n)
}

// MapData is NBD_CMD_BLOCK_STATUS with base:allocation: holes and zeros
// become StatusZero, everything else StatusData.
func (c *Client) MapData(off, n int64) ([]block.Extent, error) {
	if off < 0 || n < 0 || n > math.MaxInt64-off {
		return nil, fmt.Errorf("%s: %w: block status at %d+%d", c.name, block.ErrOutOfRange, off, n)
	}
	end := off + n
	if end <= c.size {
		return c.mapData(off, n)
	}
	// Past the end of the export (a raw image whose size is not a
	// multiple of 512 extends to the next sector) lie zeros that no
	// export byte holds.
	var out []block.Extent
	if off < c.size {
		var err error
		if out, err = c.mapData(off, c.size-off); err != nil {
			return nil, err
		}
	}
	start := max(off, c.size)
	return append(out, block.Extent{Offset: start, Length: end - start, Status: block.StatusZero, HostOffset: -1}), nil
}

func (c *Client) mapData(off, n int64) ([]block.Extent, error) {
	var out []block.Extent
	add := func(o, l int64, st block.Status) {
		if k := len(out); k > 0 && out[k-1].Status == st {
			out[k-1].Length += l
			return
		}
		out = append(out, block.Extent{Offset: o, Length: l, Status: st, HostOffset: o, File: c.name})
	}
	end := off + n
	if !c.hasMeta {
		if n > 0 {
			add(off, n, block.StatusData)
		}
		return out, nil
	}
	// Queries cover whole blocks; what lies outside [off, end) is cut off.
	pos, qend := alignDown(off, c.minBlock), min(alignUp(end, c.minBlock), c.size)
	clip := func(o, l int64, st block.Status) {
		lo, hi := max(o, off), min(o+l, end)
		if lo < hi {
			add(lo, hi-lo, st)
		}
	}
	for pos < end {
		l := min(qend-pos, alignDown(bigStep, c.minBlock))
		cl, err := c.start(nbd.CmdBlockStatus, 0, pos, uint32(l), nil, nil)
		if err != nil {
			return nil, err
		}
		if err := c.wait(cl); err != nil {
			return nil, err
		}
		progressed := false
		for _, d := range cl.descs {
			dl := min(int64(d.Length), qend-pos)
			if dl <= 0 {
				break
			}
			st := block.StatusData
			if d.Flags&nbd.StateZero != 0 {
				st = block.StatusZero
			}
			clip(pos, dl, st)
			pos += dl
			progressed = true
		}
		if !progressed {
			return nil, fmt.Errorf("%s: block status at %d made no progress", c.name, pos)
		}
		if r := pos % c.minBlock; r != 0 && pos < qend {
			// A server that breaks its own minimum: the rest of that
			// block is called data, which is always safe, so that the
			// next query starts aligned.
			pad := min(c.minBlock-r, qend-pos)
			clip(pos, pad, block.StatusData)
			pos += pad
		}
	}
	return out, nil
}

// Close disconnects politely.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		alive := c.err == nil
		c.mu.Unlock()
		if alive {
			hdr := nbd.AppendRequest(nil, nbd.Request{Type: nbd.CmdDisc})
			c.wmu.Lock()
			c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.conn.Write(hdr)
			c.wmu.Unlock()
		}
		c.abort(fmt.Errorf("%s: %w", c.name, block.ErrClosed))
		<-c.readerEnd
	})
	return nil
}

var (
	_ block.File        = (*Client)(nil)
	_ block.HolePuncher = (*Client)(nil)
	_ block.ZeroRanger  = (*Client)(nil)
	_ block.DataMapper  = (*Client)(nil)
)

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReaderSize(c, 64<<10) }
