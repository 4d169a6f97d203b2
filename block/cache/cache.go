// Package cache is a read cache for any image, like nbdkit's cache
// filter: an LRU of fixed-size blocks of image data under a memory bound.
// It is write-through: writes go to the image first and then update the
// cached blocks they touch, so nothing acknowledged lives only in the
// cache. It installs itself as block.Open's cache for
// OpenOptions.CacheSize.
package cache

import (
	"container/list"
	"fmt"
	"io"
	"sync"

	"vdisk/block"
)

func init() {
	block.SetCacheWrapper(func(img block.Image, size int64) block.Image { return New(img, size) })
}

// BlockSize is the unit of caching. 64 KiB amortises per-request costs of
// slow backends while keeping small random reads from pulling in much.
const BlockSize = 64 << 10

// Image wraps an image with a read cache.
type Image struct {
	block.Image
	max int // blocks

	mu    sync.Mutex
	ll    *list.List // front = most recent
	items map[int64]*list.Element
	// epoch counts invalidating operations; a fill started before one
	// finished is not inserted, so the cache never holds stale data.
	epoch uint64

	hits, misses uint64
}

type entry struct {
	idx  int64
	data []byte // BlockSize, or shorter for the last block
}

// New wraps img with a cache of at most bytes bytes (at least one block).
func New(img block.Image, bytes int64) *Image {
	n := int(max(bytes/BlockSize, 1))
	return &Image{Image: img, max: n, ll: list.New(), items: map[int64]*list.Element{}}
}

// Unwrap returns the cached image.
func (c *Image) Unwrap() block.Image { return c.Image }

// Stats returns hit and miss counts of block lookups.
func (c *Image) Stats() (hits, misses uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hits, c.misses
}

func (c *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(off, int64(len(p)), c.Size()); err != nil {
		return 0, err
	}
	done := 0
	for done < len(p) {
		o := off + int64(done)
		idx, in := o/BlockSize, o%BlockSize
		n := int(min(int64(len(p)-done), BlockSize-in))
		if c.lookup(idx, in, p[done:done+n]) {
			done += n
			continue
		}
		// Fill every consecutive missing block with one read.
		last := idx
		for end := off + int64(len(p)); (last+1)*BlockSize < end && !c.has(last+1); last++ {
		}
		if err := c.fill(idx, last, p, off, done); err != nil {
			return done, err
		}
		done = int(min(int64(len(p)), (last+1)*BlockSize-off))
	}
	return len(p), nil
}

func (c *Image) has(idx int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.items[idx]
	return ok
}

func (c *Image) lookup(idx, in int64, p []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[idx]
	if !ok {
		c.misses++
		return false
	}
	c.hits++
	c.ll.MoveToFront(e)
	copy(p, e.Value.(*entry).data[in:])
	return true
}

// fill reads blocks first..last from the image, copies the requested part
// into p and caches them.
func (c *Image) fill(first, last int64, p []byte, off int64, done int) error {
	c.mu.Lock()
	ep := c.epoch
	c.mu.Unlock()
	start := first * BlockSize
	end := min((last+1)*BlockSize, c.Size())
	if end < min(off+int64(len(p)), (last+1)*BlockSize) {
		// A concurrent shrink cut the range this read was checked against.
		return fmt.Errorf("cache: read at %d: the image shrank during the read: %w", off, io.ErrUnexpectedEOF)
	}
	buf := make([]byte, end-start)
	if _, err := c.Image.ReadAt(buf, start); err != nil {
		return err
	}
	from := off + int64(done)
	to := min(off+int64(len(p)), end)
	copy(p[done:done+int(to-from)], buf[from-start:])
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.epoch != ep {
		return nil
	}
	for idx := first; idx <= last; idx++ {
		lo := (idx - first) * BlockSize
		hi := min(lo+BlockSize, int64(len(buf)))
		c.insertLocked(idx, buf[lo:hi:hi])
	}
	return nil
}

func (c *Image) insertLocked(idx int64, data []byte) {
	if e, ok := c.items[idx]; ok {
		e.Value.(*entry).data = data
		c.ll.MoveToFront(e)
		return
	}
	c.items[idx] = c.ll.PushFront(&entry{idx, data})
	for c.ll.Len() > c.max {
		b := c.ll.Back()
		c.ll.Remove(b)
		delete(c.items, b.Value.(*entry).idx)
	}
}

// invalidate drops cached blocks overlapping [off, off+n) after the
// underlying operation completed, and bumps the epoch so that fills that
// raced with it are discarded.
func (c *Image) invalidate(off, n int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.epoch++
	if n <= 0 {
		return
	}
	first, last := off/BlockSize, (off+n-1)/BlockSize
	if last-first+1 > int64(len(c.items)) {
		for idx := range c.items {
			if idx >= first && idx <= last {
				c.ll.Remove(c.items[idx])
				delete(c.items, idx)
			}
		}
		return
	}
	for idx := first; idx <= last; idx++ {
		if e, ok := c.items[idx]; ok {
			c.ll.Remove(e)
			delete(c.items, idx)
		}
	}
}

func (c *Image) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.Image.WriteAt(p, off)
	c.invalidate(off, int64(len(p)))
	return n, err
}

func (c *Image) WriteZeroes(off, n int64, flags block.ZeroFlags) error {
	err := c.Image.WriteZeroes(off, n, flags)
	c.invalidate(off, n)
	return err
}

func (c *Image) Discard(off, n int64) error {
	err := c.Image.Discard(off, n)
	c.invalidate(off, n)
	return err
}

// Resize passes through to images that can resize, dropping the cache.
func (c *Image) Resize(size int64, shrink bool) error {
	r, ok := c.Image.(block.Resizer)
	if !ok {
		return block.ErrNotSupported
	}
	err := r.Resize(size, shrink)
	c.invalidate(0, 1<<62)
	return err
}

// Check passes through to images that can check themselves; a repair may
// change what reads return, so the cache is dropped.
func (c *Image) Check(mode block.RepairMode) (*block.CheckResult, error) {
	ch, ok := c.Image.(block.Checker)
	if !ok {
		return nil, block.ErrNotSupported
	}
	res, err := ch.Check(mode)
	c.invalidate(0, 1<<62)
	return res, err
}

var (
	_ block.Image   = (*Image)(nil)
	_ block.Resizer = (*Image)(nil)
	_ block.Checker = (*Image)(nil)
)
