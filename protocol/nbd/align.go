package nbd

import (
	"errors"
	"fmt"
	"sync"

	"vdisk/nbd"
)

// Block size constraints. A client that asks for NBD_INFO_BLOCK_SIZE in
// NBD_OPT_GO must then keep to what the server sends: offsets and lengths
// multiples of the minimum, READ, WRITE and WRITE_ZEROES no longer than
// the maximum. Servers enforce it (nbdkit's blocksize-policy filter fails
// unaligned requests with EINVAL), so unaligned reads go through whole
// blocks and unaligned writes read, modify and write the blocks at their
// ends, as QEMU's block layer does.

func alignDown(v, a int64) int64 { return v - v%a }

func alignUp(v, a int64) int64 { return alignDown(v+a-1, a) }

// maxMinBlock is the largest minimum block size the spec allows.
const maxMinBlock = 64 << 10

// setBlockSizes takes the server's NBD_INFO_BLOCK_SIZE.
func (c *Client) setBlockSizes(minimum, preferred, maximum uint32) error {
	lo, pref, hi := int64(minimum), int64(preferred), int64(maximum)
	if lo == 0 || lo > maxMinBlock || lo&(lo-1) != 0 {
		return fmt.Errorf("server sent a minimum block size of %d (not a power of 2 up to 64 KiB)", lo)
	}
	if hi < lo {
		return fmt.Errorf("server sent a maximum block size of %d, below its minimum of %d", hi, lo)
	}
	c.minBlock = lo
	// Requests are split in multiples of the preferred size where the
	// maximum allows, so that no piece but the last needs a
	// read-modify-write on the server.
	step := lo
	if pref >= lo && pref&(pref-1) == 0 && pref <= min(hi, nbd.MaxPayload) {
		step = pref
	}
	c.maxPayload = alignDown(min(nbd.MaxPayload, hi), step)
	c.maxLength = alignDown(min(bigStep, hi), lo)
	return nil
}

// span is one piece of a command: buf is the READ destination or the
// WRITE payload; n is the length of a command without payload.
type span struct {
	off int64
	n   int64
	buf []byte
}

// run sends every span of a command, split in pieces of at most max
// bytes, all in flight at once, and waits for all of them.
func (c *Client) run(typ, flags uint16, max int64, spans ...span) error {
	var calls []*call
	var firstErr error
	for _, s := range spans {
		if s.buf != nil {
			s.n = int64(len(s.buf))
		}
		for done := int64(0); done < s.n && firstErr == nil; {
			l := min(s.n-done, max)
			var payload, buf []byte
			switch typ {
			case nbd.CmdRead:
				buf = s.buf[done : done+l]
			case nbd.CmdWrite:
				payload = s.buf[done : done+l]
			}
			cl, err := c.start(typ, flags, s.off+done, uint32(l), payload, buf)
			if err != nil {
				firstErr = err
				break
			}
			calls = append(calls, cl)
			done += l
		}
	}
	for _, cl := range calls {
		if err := c.wait(cl); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// split runs a command over [off, off+n) in pieces of at most max bytes.
func (c *Client) split(typ, flags uint16, off, n, max int64, p []byte) error {
	return c.run(typ, flags, max, span{off: off, n: n, buf: p})
}

// edges describes an unaligned range [off, off+n): the whole blocks
// around it, [lo, hi), and the blocks at either end that it covers only
// in part, each of which must go through a bounce buffer. When the range
// spans at most two blocks, one bounce buffer covers all of [lo, hi) and
// there is no middle.
type edges struct {
	lo, hi  int64
	bounces []span // where the range starts or ends off a boundary
	mid     span   // the whole blocks in between, n == 0 if none
}

// The export's size is a multiple of the block size (Dial rounds it
// down), so the whole blocks around a range within it are within it too.
func (c *Client) edges(off, n int64) edges {
	b := c.minBlock
	e := edges{lo: alignDown(off, b), hi: alignUp(off+n, b)}
	if e.hi-e.lo <= 2*b {
		e.bounces = []span{{off: e.lo, buf: make([]byte, e.hi-e.lo)}}
		return e
	}
	midLo, midHi := alignUp(off, b), alignDown(off+n, b)
	if off != e.lo {
		e.bounces = append(e.bounces, span{off: e.lo, buf: make([]byte, b)})
	}
	if off+n != e.hi {
		e.bounces = append(e.bounces, span{off: midHi, buf: make([]byte, b)})
	}
	e.mid = span{off: midLo, n: midHi - midLo}
	return e
}

// read fills p from off (within the export).
func (c *Client) read(p []byte, off int64) error {
	n := int64(len(p))
	if n == 0 {
		return nil
	}
	if off%c.minBlock == 0 && n%c.minBlock == 0 {
		return c.split(nbd.CmdRead, 0, off, n, c.maxPayload, p)
	}
	e := c.edges(off, n)
	spans := e.bounces
	if e.mid.n > 0 {
		spans = append(spans, span{off: e.mid.off, buf: p[e.mid.off-off : e.mid.off-off+e.mid.n]})
	}
	if err := c.run(nbd.CmdRead, 0, c.maxPayload, spans...); err != nil {
		return err
	}
	for _, s := range e.bounces {
		copyAt(p, off, s)
	}
	return nil
}

// copyAt copies the part of bounce buffer s that overlaps p (at off) into p.
func copyAt(p []byte, off int64, s span) {
	lo, hi := max(off, s.off), min(off+int64(len(p)), s.off+int64(len(s.buf)))
	if lo < hi {
		copy(p[lo-off:hi-off], s.buf[lo-s.off:hi-s.off])
	}
}

// write writes p at off (within the export).
func (c *Client) write(p []byte, off int64) error {
	return c.modify(p, off, int64(len(p)), 0)
}

// zero is WRITE_ZEROES (with flags) over [off, off+n).
func (c *Client) zero(flags uint16, off, n int64) error {
	return c.modify(nil, off, n, flags)
}

// modify writes p, or zeros if p is nil, over [off, off+n). Blocks only
// partly covered are read, patched and written back whole; an empty range
// covers none.
func (c *Client) modify(p []byte, off, n int64, zflags uint16) error {
	if n == 0 {
		return nil
	}
	b := c.minBlock
	whole := func(o, l int64) span {
		if p == nil {
			return span{off: o, n: l}
		}
		return span{off: o, buf: p[o-off : o-off+l]}
	}
	send := func(spans ...span) error {
		if p == nil {
			return c.run(nbd.CmdWriteZeroes, zflags, c.maxLength, spans...)
		}
		return c.run(nbd.CmdWrite, 0, c.maxPayload, spans...)
	}
	if off%b == 0 && n%b == 0 {
		defer c.rmw.lock(b > 1, off, off+n, false)()
		return send(whole(off, n))
	}
	e := c.edges(off, n)
	// Two read-modify-writes of one block must not interleave, nor may
	// a write land between the read and the write-back of one: either
	// would undo part of an acknowledged write.
	defer c.rmw.lock(true, e.lo, e.hi, true)()
	if err := c.run(nbd.CmdRead, 0, c.maxPayload, e.bounces...); err != nil {
		return err
	}
	for _, s := range e.bounces {
		lo, hi := max(off, s.off), min(off+n, s.off+int64(len(s.buf)))
		if p == nil {
			clear(s.buf[lo-s.off : hi-s.off])
		} else {
			copy(s.buf[lo-s.off:hi-s.off], p[lo-off:hi-off])
		}
	}
	var errs []error
	if e.mid.n > 0 {
		errs = append(errs, send(whole(e.mid.off, e.mid.n)))
	}
	errs = append(errs, c.run(nbd.CmdWrite, 0, c.maxPayload, e.bounces...))
	return errors.Join(errs...)
}

// rangeLock is a lock on ranges of the export, shared or exclusive.
type rangeLock struct {
	mu   sync.Mutex
	cond *sync.Cond
	held []*lockedRange
}

type lockedRange struct {
	lo, hi int64
	excl   bool
}

// lock takes [lo, hi) (when on) and returns the function that releases it.
func (l *rangeLock) lock(on bool, lo, hi int64, excl bool) func() {
	if !on {
		return func() {}
	}
	l.mu.Lock()
	if l.cond == nil {
		l.cond = sync.NewCond(&l.mu)
	}
	for l.conflicts(lo, hi, excl) {
		l.cond.Wait()
	}
	r := &lockedRange{lo, hi, excl}
	l.held = append(l.held, r)
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		for i, h := range l.held {
			if h == r {
				l.held = append(l.held[:i], l.held[i+1:]...)
				break
			}
		}
		l.cond.Broadcast()
		l.mu.Unlock()
	}
}

func (l *rangeLock) conflicts(lo, hi int64, excl bool) bool {
	for _, h := range l.held {
		if h.lo < hi && lo < h.hi && (excl || h.excl) {
			return true
		}
	}
	return false
}
