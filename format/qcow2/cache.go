package qcow2

import (
	"container/list"
	"sync"
)

// table is one cached metadata cluster: an L2 table or a refcount block.
type table struct {
	off   int64
	buf   []byte
	dirty bool // changed in memory, not yet written (guarded by Image.mu held exclusively)
	elem  *list.Element
}

// cache is an LRU of metadata clusters keyed by host offset. Its own mutex
// guards the map and list, because readers holding Image.mu shared load
// tables concurrently; table contents are guarded by Image.mu.
type cache struct {
	mu  sync.Mutex
	cap int
	m   map[int64]*table
	lru *list.List // front = most recently used
}

func newCache(capacity int) *cache {
	return &cache{cap: max(capacity, 4), m: map[int64]*table{}, lru: list.New()}
}

func (c *cache) get(off int64) *table {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.m[off]
	if t != nil {
		c.lru.MoveToFront(t.elem)
	}
	return t
}

// add inserts t unless a table for the offset is already cached (another
// reader loaded it first), and returns the cached one. Clean tables beyond
// the capacity are evicted; dirty ones stay until written back.
func (c *cache) add(t *table) *table {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.m[t.off]; old != nil {
		c.lru.MoveToFront(old.elem)
		return old
	}
	t.elem = c.lru.PushFront(t)
	c.m[t.off] = t
	c.evictLocked()
	return t
}

// evictLocked never evicts the most recently used table: the caller that
// just loaded it is about to change it, and once every other table is
// dirty it would otherwise be the only clean one, evicted at once and its
// changes lost with it.
func (c *cache) evictLocked() {
	front := c.lru.Front()
	for e := c.lru.Back(); e != nil && e != front && len(c.m) > c.cap; {
		prev := e.Prev()
		t := e.Value.(*table)
		if !t.dirty {
			c.lru.Remove(e)
			delete(c.m, t.off)
		}
		e = prev
	}
}

// evict trims clean tables after a write-back.
func (c *cache) evict() {
	c.mu.Lock()
	c.evictLocked()
	c.mu.Unlock()
}

// drop forgets the table at off (its cluster was freed).
func (c *cache) drop(off int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t := c.m[off]; t != nil {
		c.lru.Remove(t.elem)
		delete(c.m, off)
	}
}

// dirty lists dirty tables in offset order... order does not matter for
// correctness within one kind; callers sort by kind.
func (c *cache) dirtyTables() []*table {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*table
	for _, t := range c.m {
		if t.dirty {
			out = append(out, t)
		}
	}
	return out
}

func (c *cache) overfull() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m) > c.cap
}

func (c *cache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = map[int64]*table{}
	c.lru.Init()
}
