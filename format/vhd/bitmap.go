package vhd

import (
	"container/list"
	"sync"
)

// bitmapCacheEntries is how many block bitmaps stay in memory: with the
// default 2 MiB blocks that is 32 KiB of bitmaps covering 128 MiB of disk.
const bitmapCacheEntries = 64

// bitmapCache is an LRU of sector bitmaps by block index. It only stores
// and hands out copies' owners: callers that modify a bitmap hold the
// block's stripe lock, so a bitmap is never changed by two goroutines.
type bitmapCache struct {
	mu    sync.Mutex
	max   int
	ll    *list.List // front = most recent
	items map[int64]*list.Element
}

type bitmapEntry struct {
	idx int64
	bm  []byte
}

func newBitmapCache(max int) *bitmapCache {
	return &bitmapCache{max: max, ll: list.New(), items: map[int64]*list.Element{}}
}

// get returns the cached bitmap. The slice must be treated as read-only
// unless the caller holds the block's stripe lock.
func (c *bitmapCache) get(idx int64) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[idx]; ok {
		c.ll.MoveToFront(e)
		return e.Value.(*bitmapEntry).bm, true
	}
	return nil, false
}

func (c *bitmapCache) put(idx int64, bm []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[idx]; ok {
		e.Value.(*bitmapEntry).bm = bm
		c.ll.MoveToFront(e)
		return
	}
	c.items[idx] = c.ll.PushFront(&bitmapEntry{idx, bm})
	for c.ll.Len() > c.max {
		last := c.ll.Back()
		c.ll.Remove(last)
		delete(c.items, last.Value.(*bitmapEntry).idx)
	}
}

func (c *bitmapCache) drop(idx int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[idx]; ok {
		c.ll.Remove(e)
		delete(c.items, idx)
	}
}

// bitSet reports whether sector s of a block is marked present. Bit 7 of
// byte 0 is sector 0: the bitmap is big-endian bit order.
func bitSet(bm []byte, s int64) bool { return bm[s>>3]&(0x80>>(s&7)) != 0 }

func setBit(bm []byte, s int64) { bm[s>>3] |= 0x80 >> (s & 7) }

// allSet reports whether sectors [s0, s1] are all marked.
func allSet(bm []byte, s0, s1 int64) bool {
	for s := s0; s <= s1; s++ {
		if !bitSet(bm, s) {
			return false
		}
	}
	return true
}
