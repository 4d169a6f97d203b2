package mem

import (
	"sync"

	"vdisk/block"
)

// chunkSize is the unit of allocation: large enough that a map entry per
// chunk stays cheap, small enough that sparse disks stay small.
const chunkSize = 64 << 10

const stripes = 64

const maxScan = 1 << 30

// store is a sparse byte array in RAM. Chunks never written hold no memory
// and read as zeros. Striped locks let I/O to different chunks run in
// parallel while keeping each chunk's bytes race-free.
type store struct {
	mu     sync.RWMutex // guards chunks (the map itself)
	chunks map[int64]*[chunkSize]byte
	locks  [stripes]sync.RWMutex // guard the bytes of chunk i in locks[i%stripes]
}

func newStore() *store { return &store{chunks: map[int64]*[chunkSize]byte{}} }

func (s *store) chunk(i int64) *[chunkSize]byte {
	s.mu.RLock()
	c := s.chunks[i]
	s.mu.RUnlock()
	return c
}

func (s *store) chunkForWrite(i int64) *[chunkSize]byte {
	if c := s.chunk(i); c != nil {
		return c
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.chunks[i]
	if c == nil {
		c = new([chunkSize]byte)
		s.chunks[i] = c
	}
	return c
}

// readAt fills p from off; the caller has checked the range.
func (s *store) readAt(p []byte, off int64) {
	for len(p) > 0 {
		i, o := off/chunkSize, off%chunkSize
		n := min(int64(len(p)), chunkSize-o)
		lk := &s.locks[i%stripes]
		lk.RLock()
		if c := s.chunk(i); c != nil {
			copy(p[:n], c[o:o+n])
		} else {
			clear(p[:n])
		}
		lk.RUnlock()
		p, off = p[n:], off+n
	}
}

// writeAt stores p at off, allocating chunks as needed. Zero data aimed at
// an absent chunk allocates nothing.
func (s *store) writeAt(p []byte, off int64) {
	for len(p) > 0 {
		i, o := off/chunkSize, off%chunkSize
		n := min(int64(len(p)), chunkSize-o)
		lk := &s.locks[i%stripes]
		lk.Lock()
		if c := s.chunk(i); c != nil {
			copy(c[o:o+n], p[:n])
		} else if !block.IsZero(p[:n]) {
			copy(s.chunkForWrite(i)[o:o+n], p[:n])
		}
		lk.Unlock()
		p, off = p[n:], off+n
	}
}

// zero makes a range read as zeros, dropping whole chunks it covers.
func (s *store) zero(off, n int64) {
	for n > 0 {
		i, o := off/chunkSize, off%chunkSize
		l := min(n, chunkSize-o)
		lk := &s.locks[i%stripes]
		lk.Lock()
		if l == chunkSize {
			s.mu.Lock()
			delete(s.chunks, i)
			s.mu.Unlock()
		} else if c := s.chunk(i); c != nil {
			clear(c[o : o+l])
		}
		lk.Unlock()
		off, n = off+l, n-l
	}
}

// truncate drops chunks wholly at or beyond size and zeroes the tail of
// the last partial chunk, so growing again reads zeros. Locks are taken
// stripe first, then the map, as everywhere else.
func (s *store) truncate(size int64) {
	s.mu.RLock()
	var victims []int64
	for i := range s.chunks {
		if i*chunkSize+chunkSize > size {
			victims = append(victims, i)
		}
	}
	s.mu.RUnlock()
	for _, i := range victims {
		start := i * chunkSize
		lk := &s.locks[i%stripes]
		lk.Lock()
		if start >= size {
			s.mu.Lock()
			delete(s.chunks, i)
			s.mu.Unlock()
		} else if c := s.chunk(i); c != nil {
			clear(c[size-start:])
		}
		lk.Unlock()
	}
}

// allocated reports whether the chunk holding off has memory, and where
// the run of chunks with the same answer ends (bounded by end).
func (s *store) allocated(off, end int64) (bool, int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i := off / chunkSize
	_, has := s.chunks[i]
	next := (i + 1) * chunkSize
	// Bound the scan: callers may ask about terabytes at once and accept a
	// shorter answer.
	end = min(end, off+maxScan)
	for next < end {
		if _, h := s.chunks[next/chunkSize]; h != has {
			break
		}
		next += chunkSize
	}
	return has, min(next, end)
}

// bytes is the memory held.
func (s *store) bytes() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return int64(len(s.chunks)) * chunkSize
}
