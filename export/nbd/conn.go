package nbd

import (
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

// conn is one connection in the transmission phase.
type conn struct {
	srv        *Server
	conn       net.Conn
	exp        *Export
	flags      uint16
	structured bool
	meta       bool
	readOnly   bool

	wmu sync.Mutex // serialises replies: each goes out whole

	budgetMu   sync.Mutex
	budgetCond *sync.Cond
	used       int64
	inflight   int

	wg      sync.WaitGroup
	jobs    chan job
	workers int // started so far; only serve touches it
}

// discReplyTimeout bounds how long replies to requests in progress may
// take to write after the client sent NBD_CMD_DISC.
const discReplyTimeout = time.Minute

// job is one request handed to a worker.
type job struct {
	req     nbd.Request
	payload *[]byte
	cost    int64
}

// acquire waits until the connection may take on a request holding n
// bytes. A request bigger than the whole budget still runs, alone.
func (c *conn) acquire(n int64) int {
	c.budgetMu.Lock()
	for c.inflight > 0 && (c.inflight >= maxInFlight || c.used+n > maxInFlightBytes) {
		c.budgetCond.Wait()
	}
	c.inflight++
	c.used += n
	inflight := c.inflight
	c.budgetMu.Unlock()
	return inflight
}

// idle reports whether no request is in progress.
func (c *conn) idle() bool {
	c.budgetMu.Lock()
	defer c.budgetMu.Unlock()
	return c.inflight == 0
}

func (c *conn) release(n int64) {
	c.budgetMu.Lock()
	c.inflight--
	c.used -= n
	c.budgetMu.Unlock()
	c.budgetCond.Broadcast()
}

// serve reads requests until the client disconnects, handing each to a
// worker so that slow requests do not hold up fast ones.
func (c *conn) serve() error {
	c.jobs = make(chan job, maxInFlight)
	disc := false
	defer func() {
		close(c.jobs)
		if disc {
			// The spec has the server answer what is in progress after a
			// DISC; a client that stops reading meanwhile gets a bounded
			// wait, not a connection held forever.
			c.conn.SetWriteDeadline(time.Now().Add(discReplyTimeout))
		} else {
			// The client broke the protocol, went away, or outstayed the
			// shutdown grace: replies still being written would wait
			// forever on a client that may never read them, holding its
			// connection slot. Closing fails those writes.
			c.conn.Close()
		}
		c.wg.Wait()
	}()
	r := newReader(c.conn)
	shut := c.srv.shutdownCh()
	var hdr [nbd.RequestSize]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			select {
			case <-shut:
				return nil // the grace period ran out
			default:
			}
			return err
		}
		req, err := nbd.ParseRequest(hdr[:])
		if err != nil {
			return err
		}
		if req.Type == nbd.CmdDisc {
			disc = true
			return nil
		}
		errno, msg := c.validate(req)
		select {
		case <-shut:
			if errno == 0 {
				errno, msg = nbd.ESHUTDOWN, "server is shutting down"
			}
		default:
		}
		var payload *[]byte
		var cost int64
		inflight := 0
		if req.Type == nbd.CmdWrite {
			if errno == 0 {
				cost = int64(req.Length)
				inflight = c.acquire(cost)
				payload = getBuf(int(req.Length))
				if _, err := io.ReadFull(r, *payload); err != nil {
					putBuf(payload)
					c.release(cost)
					return fmt.Errorf("reading write payload: %w", err)
				}
			} else if _, err := io.CopyN(io.Discard, r, int64(req.Length)); err != nil {
				// The payload of a refused write is skipped, not stored,
				// so that the stream stays in sync at no memory cost.
				return fmt.Errorf("skipping write payload: %w", err)
			}
		}
		if errno != 0 {
			if err := c.sendError(req, errno, msg); err != nil {
				return err
			}
			continue
		}
		if req.Type == nbd.CmdBlockStatus && c.idle() {
			// Block status is a metadata lookup; answered in place it saves
			// the goroutine hand-off, which dominates a client's stream of
			// status queries over a sparse image. Only when nothing else
			// runs: requests already in progress are never held up.
			c.acquire(0)
			err := c.handleSafely(req, nil)
			c.release(0)
			if err != nil {
				return err
			}
			continue
		}
		switch req.Type {
		case nbd.CmdRead:
			cost = int64(req.Length)
			inflight = c.acquire(cost)
		case nbd.CmdWrite:
		default:
			inflight = c.acquire(0)
		}
		// A worker per request in progress, so that slow requests never
		// hold up fast ones; workers stay for the connection's life, with
		// their grown stacks, instead of a goroutine per request.
		if c.workers < inflight {
			c.workers++
			c.wg.Add(1)
			go c.work()
		}
		c.jobs <- job{req, payload, cost}
	}
}

// work runs requests until the connection ends.
func (c *conn) work() {
	defer c.wg.Done()
	for j := range c.jobs {
		err := c.handleSafely(j.req, j.payload)
		if j.payload != nil {
			putBuf(j.payload)
		}
		c.release(j.cost)
		if err != nil {
			// A reply that cannot be written means the connection is
			// gone; closing it ends the read loop too.
			c.conn.Close()
		}
	}
}

// handleSafely runs one request. A panic in a driver ends this client's
// connection, not the server with every other client, and never shows the
// user a Go stack trace.
func (c *conn) handleSafely(req nbd.Request, payload *[]byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error in %s at %d+%d: %v", nbd.CmdName(req.Type), req.Offset, req.Length, r)
			c.srv.logf("%v", err)
		}
	}()
	return c.handle(req, payload)
}

// validate checks a request against the export before anything is done
// or allocated for it, returning the error the spec asks for.
func (c *conn) validate(req nbd.Request) (uint32, string) {
	size := uint64(c.exp.Image.Size())
	maxPayload := c.srv.maxPayload()
	inRange := req.Offset <= size && uint64(req.Length) <= size-req.Offset
	allowed := nbd.CmdFlagFUA
	switch req.Type {
	case nbd.CmdRead:
		if c.structured {
			allowed |= nbd.CmdFlagDF
		}
	case nbd.CmdWriteZeroes:
		allowed |= nbd.CmdFlagNoHole | nbd.CmdFlagFastZero
	case nbd.CmdBlockStatus:
		allowed |= nbd.CmdFlagReqOne
	}
	if req.Flags&^allowed != 0 {
		return nbd.EINVAL, fmt.Sprintf("invalid flags %#x for %s", req.Flags, nbd.CmdName(req.Type))
	}
	switch req.Type {
	case nbd.CmdRead:
		if req.Length > maxPayload {
			if req.Flags&nbd.CmdFlagDF != 0 {
				return nbd.EOVERFLOW, "read too large for one chunk"
			}
			return nbd.EINVAL, fmt.Sprintf("read of %d bytes exceeds the %d byte limit", req.Length, maxPayload)
		}
		if !inRange {
			return nbd.EINVAL, "read past the end of the export"
		}
	case nbd.CmdWrite, nbd.CmdWriteZeroes, nbd.CmdTrim:
		if c.readOnly {
			return nbd.EPERM, "export is read-only"
		}
		if req.Type == nbd.CmdWrite && req.Length > maxPayload {
			return nbd.EINVAL, fmt.Sprintf("write of %d bytes exceeds the %d byte limit", req.Length, maxPayload)
		}
		if !inRange {
			if req.Type == nbd.CmdTrim {
				return nbd.EINVAL, "trim past the end of the export"
			}
			return nbd.ENOSPC, "write past the end of the export"
		}
	case nbd.CmdFlush:
		if req.Offset != 0 || req.Length != 0 {
			return nbd.EINVAL, "flush with offset or length"
		}
	case nbd.CmdCache:
		if !inRange {
			return nbd.EINVAL, "cache past the end of the export"
		}
	case nbd.CmdBlockStatus:
		if !c.meta {
			return nbd.EINVAL, "no metadata context selected"
		}
		if req.Length == 0 || !inRange {
			return nbd.EINVAL, "block status outside the export"
		}
	default:
		return nbd.EINVAL, fmt.Sprintf("unknown command %d", req.Type)
	}
	return 0, ""
}

// errno maps an image error to the value the spec defines for it.
func errno(err error) uint32 {
	var en syscall.Errno
	switch {
	case errors.Is(err, block.ErrReadOnly):
		return nbd.EPERM
	case errors.Is(err, block.ErrOutOfRange):
		return nbd.EINVAL
	case errors.Is(err, block.ErrNotSupported):
		return nbd.ENOTSUP
	case errors.As(err, &en):
		switch en {
		case syscall.EPERM, syscall.EROFS:
			return nbd.EPERM
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return nbd.ENOSPC
		case syscall.ENOMEM:
			return nbd.ENOMEM
		case syscall.EINVAL:
			return nbd.EINVAL
		case syscall.EOPNOTSUPP:
			return nbd.ENOTSUP
		case syscall.EOVERFLOW:
			return nbd.EOVERFLOW
		}
	}
	return nbd.EIO
}

func (c *conn) send(bufs net.Buffers) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_, err := bufs.WriteTo(c.conn)
	return err
}

// sendError answers a request with an error: an error chunk carrying the
// message where structured replies are in use for the command, a simple
// reply otherwise.
func (c *conn) sendError(req nbd.Request, e uint32, msg string) error {
	if c.structured && (req.Type == nbd.CmdRead || req.Type == nbd.CmdBlockStatus) {
		if len(msg) > nbd.MaxString {
			msg = msg[:nbd.MaxString]
		}
		b := nbd.AppendChunk(make([]byte, 0, nbd.StructuredReplySize+6+len(msg)), nbd.ReplyFlagDone, nbd.ReplyTypeError, req.Cookie, uint32(6+len(msg)))
		b = be32(b, e)
		b = append(b, byte(len(msg)>>8), byte(len(msg)))
		b = append(b, msg...)
		return c.send(net.Buffers{b})
	}
	return c.send(net.Buffers{nbd.AppendSimpleReply(make([]byte, 0, nbd.SimpleReplySize), e, req.Cookie)})
}

func be32(b []byte, v uint32) []byte {
	return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

func be64(b []byte, v uint64) []byte {
	return be32(be32(b, uint32(v>>32)), uint32(v))
}

func (c *conn) ok(req nbd.Request) error {
	return c.send(net.Buffers{nbd.AppendSimpleReply(make([]byte, 0, nbd.SimpleReplySize), 0, req.Cookie)})
}

func (c *conn) fail(req nbd.Request, err error) error {
	c.srv.logf("nbd: %s at %d+%d: %v", nbd.CmdName(req.Type), req.Offset, req.Length, err)
	return c.sendError(req, errno(err), err.Error())
}

func (c *conn) handle(req nbd.Request, payload *[]byte) error {
	img := c.exp.Image
	off, n := int64(req.Offset), int64(req.Length)
	var err error
	switch req.Type {
	case nbd.CmdRead:
		return c.read(req)
	case nbd.CmdWrite:
		_, err = img.WriteAt(*payload, off)
	case nbd.CmdFlush:
		err = img.Flush()
	case nbd.CmdTrim:
		c.exp.data.invalidate()
		err = img.Discard(off, n)
		c.exp.data.invalidate()
	case nbd.CmdWriteZeroes:
		c.exp.data.invalidate()
		var zf block.ZeroFlags
		if req.Flags&nbd.CmdFlagNoHole == 0 {
			zf |= block.ZeroMayUnmap
		}
		if req.Flags&nbd.CmdFlagFastZero != 0 {
			zf |= block.ZeroFast
		}
		err = img.WriteZeroes(off, n, zf)
		c.exp.data.invalidate()
	case nbd.CmdCache:
		// Advisory; vdisk's images have no cache worth warming here.
	case nbd.CmdBlockStatus:
		return c.blockStatus(req)
	}
	if err == nil && req.Flags&nbd.CmdFlagFUA != 0 && req.Type != nbd.CmdFlush {
		err = img.Flush()
	}
	if err != nil {
		if req.Type == nbd.CmdWriteZeroes && errors.Is(err, block.ErrNotSupported) {
			return c.sendError(req, nbd.ENOTSUP, "fast zeroing not possible")
		}
		return c.fail(req, err)
	}
	return c.ok(req)
}

// read answers NBD_CMD_READ. With structured replies, ranges the image
// reports as zeros travel as hole chunks instead of zero bytes, as
// qemu-nbd does; the whole reply is one writev.
func (c *conn) read(req nbd.Request) error {
	img := c.exp.Image
	off, n := int64(req.Offset), int64(req.Length)
	bp := getBuf(int(n))
	defer putBuf(bp)
	buf := *bp
	if !c.structured {
		if _, err := img.ReadAt(buf, off); err != nil {
			return c.fail(req, err)
		}
		hdr := nbd.AppendSimpleReply(make([]byte, 0, nbd.SimpleReplySize), 0, req.Cookie)
		return c.send(net.Buffers{hdr, buf})
	}
	if n == 0 {
		return c.send(net.Buffers{nbd.AppendChunk(nil, nbd.ReplyFlagDone, nbd.ReplyTypeNone, req.Cookie, 0)})
	}
	var exts []block.Extent
	if req.Flags&nbd.CmdFlagDF == 0 {
		var err error
		if exts, err = c.readMap(off, n); err != nil {
			return c.fail(req, err)
		}
	}
	if len(exts) <= 1 && (len(exts) == 0 || exts[0].Status&block.StatusZero == 0) {
		// All data (or DF): one chunk.
		if _, err := img.ReadAt(buf, off); err != nil {
			return c.fail(req, err)
		}
		hdr := nbd.AppendChunk(make([]byte, 0, nbd.StructuredReplySize+8), nbd.ReplyFlagDone, nbd.ReplyTypeOffsetData, req.Cookie, uint32(8+n))
		hdr = be64(hdr, uint64(off))
		return c.send(net.Buffers{hdr, buf})
	}
	// One small buffer holds every chunk header; data slices point into buf.
	hdrs := make([]byte, 0, len(exts)*(nbd.StructuredReplySize+12))
	bufs := make(net.Buffers, 0, 2*len(exts))
	for i, e := range exts {
		flags := uint16(0)
		if i == len(exts)-1 {
			flags = nbd.ReplyFlagDone
		}
		start := len(hdrs)
		if e.Status&block.StatusZero != 0 {
			hdrs = nbd.AppendChunk(hdrs, flags, nbd.ReplyTypeOffsetHole, req.Cookie, 12)
			hdrs = be64(hdrs, uint64(e.Offset))
			hdrs = be32(hdrs, uint32(e.Length))
			bufs = append(bufs, hdrs[start:])
			continue
		}
		data := buf[e.Offset-off : e.Offset-off+e.Length]
		if _, err := img.ReadAt(data, e.Offset); err != nil {
			return c.fail(req, err)
		}
		hdrs = nbd.AppendChunk(hdrs, flags, nbd.ReplyTypeOffsetData, req.Cookie, uint32(8+e.Length))
		hdrs = be64(hdrs, uint64(e.Offset))
		bufs = append(bufs, hdrs[start:], data)
	}
	return c.send(bufs)
}

// readAhead is how far past a read its block-status lookup looks, so
// that one lookup serves the reads that follow.
const readAhead = 8 << 20

// readMap returns the extents of [off, off+n) for a structured read, or
// nil when the whole range is data. Reads inside a range already known
// to hold data skip the lookup: a sequential reader then pays for one
// lookup per readAhead bytes, not one per request.
func (c *conn) readMap(off, n int64) ([]block.Extent, error) {
	gen, hit := c.exp.data.lookup(off, n)
	if hit {
		return nil, nil
	}
	win := max(n, min(readAhead, c.exp.Image.Size()-off))
	exts, err := block.MapChain(c.exp.Image, off, win)
	if err != nil {
		return nil, err
	}
	end := off
	for _, e := range exts {
		if e.Status&block.StatusZero != 0 {
			break
		}
		end = e.Offset + e.Length
	}
	if end > off {
		c.exp.data.store(gen, off, end)
	}
	if end >= off+n {
		return nil, nil
	}
	// Keep what lies within the request.
	for i, e := range exts {
		if e.Offset+e.Length >= off+n {
			exts = exts[:i+1]
			exts[i].Length = off + n - e.Offset
			break
		}
	}
	return exts, nil
}

// maxDescriptors bounds a block status reply (qemu-nbd uses 1 MiB of
// descriptors; this is the same).
const maxDescriptors = 1 << 17

// statusWindow is how much of the export one block status lookup covers.
// A request may span 4 GiB; mapped whole, an image of small extents would
// cost memory and time in proportion before the descriptor cap or
// REQ_ONE cut the answer short. In windows, a request holds one window's
// extents at a time and stops mapping as soon as the reply is full.
const statusWindow = 32 << 20

func (c *conn) blockStatus(req nbd.Request) error {
	type desc struct{ length, flags uint32 }
	var ds []desc
	reqOne := req.Flags&nbd.CmdFlagReqOne != 0
	off, end := int64(req.Offset), int64(req.Offset)+int64(req.Length)
	full := false
	for off < end && !full {
		exts, err := block.MapChain(c.exp.Image, off, min(end-off, statusWindow))
		if err != nil {
			return c.fail(req, err)
		}
		for _, e := range exts {
			var f uint32
			if e.Status&block.StatusData == 0 {
				f |= nbd.StateHole
			}
			if e.Status&block.StatusZero != 0 {
				f |= nbd.StateZero
			}
			if k := len(ds); k > 0 && ds[k-1].flags == f {
				ds[k-1].length += uint32(e.Length)
				continue
			}
			if len(ds) == maxDescriptors || (reqOne && len(ds) == 1) {
				full = true
				break
			}
			ds = append(ds, desc{uint32(e.Length), f})
		}
		off += min(end-off, statusWindow)
	}
	if len(ds) == 0 {
		return c.sendError(req, nbd.EIO, "no block status")
	}
	b := nbd.AppendChunk(make([]byte, 0, nbd.StructuredReplySize+4+8*len(ds)), nbd.ReplyFlagDone, nbd.ReplyTypeBlockStatus, req.Cookie, uint32(4+8*len(ds)))
	b = be32(b, metaContextID)
	for _, d := range ds {
		b = be32(be32(b, d.length), d.flags)
	}
	return c.send(net.Buffers{b})
}
