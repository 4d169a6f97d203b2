package qcow2

import (
	"errors"
	"fmt"
	"io"
	"sort"

	"vdisk/block"
)

// seg is a run of guest bytes of one kind; data runs are host-contiguous.
type seg struct {
	k          kind
	goff, n    int64
	host       int64
	compressed l2e
}

// mapRange calls fn for the runs of [off, off+n), merging neighbours of the
// same kind (and contiguous host offsets). img.mu held (either mode).
func (img *Image) mapRange(off, n int64, fn func(s seg) error) error {
	var cur seg
	end := off + n
	for pos := off; pos < end; {
		vc := pos >> img.cbits
		cend := min(end, (vc+1)<<img.cbits)
		if l1i := vc >> img.l2Bits; l1i >= int64(len(img.l1)) || img.l1[l1i]&offsetMask == 0 {
			// No L2 table: the whole range it would map is unallocated.
			cend = min(end, (l1i+1)<<(img.l2Bits+img.cbits))
		}
		e, err := img.lookup(vc)
		if err != nil {
			return err
		}
		for pos < cend {
			var s seg
			in := pos & (img.cs - 1)
			if img.ext && !e.compressed() && e != (l2e{}) {
				sc := uint(in >> img.scBits)
				s = seg{k: img.subKind(e, sc), goff: pos, n: min(cend, ((pos>>img.scBits)+1)<<img.scBits) - pos}
			} else {
				s = seg{k: img.kind(e), goff: pos, n: cend - pos}
			}
			s.host = -1
			switch s.k {
			case kCompressed:
				s.compressed = e
			default:
				// Zero clusters and (extended L2) unallocated subclusters
				// of an allocated cluster keep their host offset, as
				// QEMU reports it.
				if e.host() != 0 {
					s.host = e.host() + in
				}
			}
			if cur.n > 0 && cur.k == s.k && cur.k != kCompressed &&
				((cur.host < 0) == (s.host < 0)) && (cur.host < 0 || cur.host+cur.n == s.host) {
				cur.n += s.n
			} else {
				if cur.n > 0 {
					if err := fn(cur); err != nil {
						return err
					}
				}
				cur = s
			}
			pos += s.n
		}
	}
	if cur.n > 0 {
		return fn(cur)
	}
	return nil
}

func (img *Image) ReadAt(p []byte, off int64) (int, error) {
	if err := block.CheckRange(off, int64(len(p)), img.Size()); err != nil {
		return 0, err
	}
	img.mu.RLock()
	defer img.mu.RUnlock()
	if img.closed {
		return 0, block.ErrClosed
	}
	if err := img.readLocked(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// readLocked reads guest data with img.mu held (either mode).
func (img *Image) readLocked(p []byte, off int64) error {
	return img.mapRange(off, int64(len(p)), func(s seg) error {
		b := p[s.goff-off : s.goff-off+s.n]
		switch s.k {
		case kData:
			return img.readData(b, s.host)
		case kZero:
			clear(b)
		case kUnalloc:
			return img.readBacking(b, s.goff)
		case kCompressed:
			buf := make([]byte, img.cs)
			if err := img.readCompressed(buf, s.compressed); err != nil {
				return err
			}
			in := s.goff & (img.cs - 1)
			copy(b, buf[in:in+s.n])
		}
		return nil
	})
}

func (img *Image) readCompressed(out []byte, e l2e) error {
	off, n, _, _ := img.compRange(e)
	src := make([]byte, n)
	if err := img.readData(src, off); err != nil {
		return err
	}
	if err := img.decompress(out, src); err != nil {
		return fmt.Errorf("%w (host offset %#x)", err, off)
	}
	return nil
}

func (img *Image) readBacking(b []byte, off int64) error {
	if img.backing == nil {
		clear(b)
		return nil
	}
	bs := img.backing.Size()
	if off >= bs {
		clear(b)
		return nil
	}
	k := min(int64(len(b)), bs-off)
	if _, err := img.backing.ReadAt(b[:k], off); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("qcow2: reading backing file: %w", err)
	}
	clear(b[k:])
	return nil
}

func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if img.ro || img.checkOnly {
		return 0, block.ErrReadOnly
	}
	if err := block.CheckRange(off, int64(len(p)), img.Size()); err != nil {
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	// Fast path: every cluster is already allocated and owned, so the
	// write goes in place with the metadata lock shared.
	img.mu.RLock()
	if img.closed {
		img.mu.RUnlock()
		return 0, block.ErrClosed
	}
	if img.corrupt {
		img.mu.RUnlock()
		return 0, img.errCorrupted()
	}
	done, err := img.writeInPlace(p, off)
	img.mu.RUnlock()
	if err != nil {
		return 0, err
	}
	if done {
		return len(p), nil
	}
	first, last := off>>img.cbits, (off+int64(len(p))-1)>>img.cbits
	img.mu.Lock()
	// Another write allocating these clusters is writing its data: wait
	// for it to link them, then write in place or copy as usual.
	img.waitInflight(first, last)
	if img.closed {
		img.mu.Unlock()
		return 0, block.ErrClosed
	}
	if img.corrupt {
		img.mu.Unlock()
		return 0, img.errCorrupted()
	}
	if err := img.reusePendingFrees(last - first + 1); err != nil {
		img.mu.Unlock()
		return 0, err
	}
	var runs []freshRun
	err = img.writeLocked(p, off, &runs)
	if err != nil {
		// The runs it allocated are neither written nor linked.
		img.dropRuns(runs)
	} else if len(runs) == 0 {
		err = img.afterMetaChange()
	}
	if err != nil || len(runs) == 0 {
		img.mu.Unlock()
		if err != nil {
			return 0, err
		}
		return len(p), nil
	}
	// Whole clusters newly allocated are written without the lock, so
	// that reads and other writes go on meanwhile, and linked after:
	// their clusters are registered as in flight, which makes writes to
	// them wait and everything else that changes metadata wait.
	img.inflight = append(img.inflight, [2]int64{first, last})
	img.mu.Unlock()
	var werr error
	for _, r := range runs {
		if _, err := img.data().WriteAt(r.data, r.host); err != nil {
			werr = fmt.Errorf("qcow2: writing data at %#x: %w", r.host, err)
			break
		}
	}
	img.mu.Lock()
	defer img.mu.Unlock()
	err = img.linkRuns(runs, werr)
	img.endInflight(first, last)
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// freshRun is a run of whole clusters that an allocating write took new
// host clusters for: its data is written before the L2 entries point to
// them.
type freshRun struct {
	vc, n, host int64
	data        []byte
}

// linkRuns points the L2 entries of runs to their new clusters once their
// data is written (werr nil), or gives the clusters back. img.mu held
// exclusively.
func (img *Image) linkRuns(runs []freshRun, werr error) error {
	if werr == nil && img.closed {
		werr = block.ErrClosed
	}
	if werr == nil && img.corrupt {
		werr = img.errCorrupted()
	}
	if werr != nil {
		img.dropRuns(runs)
		return werr
	}
	for i, r := range runs {
		t, idx, err := img.l2ForWrite(r.vc)
		if err != nil {
			img.dropRuns(runs[i:])
			return err
		}
		img.linkData(t, idx, r.host, r.n)
	}
	return img.afterMetaChange()
}

// linkData points the n L2 entries of t from idx on to the data clusters
// from host on, written already, and frees what they pointed to before.
// img.mu held exclusively.
func (img *Image) linkData(t *table, idx int, host, n int64) {
	for i := range int(n) {
		old := img.getEntry(t, idx+i)
		img.setEntry(t, idx+i, img.dataEntry(host+int64(i)<<img.cbits))
		img.freeEntry(old)
	}
}

// dropRuns gives back the clusters of runs that no L2 entry points to.
// img.mu held exclusively.
func (img *Image) dropRuns(runs []freshRun) {
	for _, r := range runs {
		img.dropData(r.host, r.n)
	}
}

// dropData gives back n data clusters from host on, allocated by a write
// that failed before any L2 entry pointed to them. img.mu held
// exclusively.
func (img *Image) dropData(host, n int64) {
	if img.df == nil { // data file clusters are not refcounted
		img.free(host, n<<img.cbits)
	}
}

// waitInflight waits, img.mu held exclusively, until no allocating write
// between allocation and linking covers guest clusters [first, last].
func (img *Image) waitInflight(first, last int64) {
	for {
		busy := false
		for _, r := range img.inflight {
			if r[0] <= last && first <= r[1] {
				busy = true
				break
			}
		}
		if !busy {
			return
		}
		img.inflightDone.Wait()
	}
}

func (img *Image) endInflight(first, last int64) {
	for i, r := range img.inflight {
		if r == [2]int64{first, last} {
			img.inflight = append(img.inflight[:i], img.inflight[i+1:]...)
			break
		}
	}
	img.inflightDone.Broadcast()
}

// lockMeta takes img.mu exclusively once no allocating write is between
// allocation and linking: apart from such writes and flushes, whatever
// changes metadata may change what they are about to link.
func (img *Image) lockMeta() {
	img.mu.Lock()
	for len(img.inflight) > 0 {
		img.inflightDone.Wait()
	}
}

// reusePendingFrees makes clusters freed since the last flush (by discard,
// or by overwriting compressed or shared clusters) allocatable before an
// allocation would grow the file instead: they can only be reused once the
// metadata that dropped their references is durable, which a flush
// ensures. Without this, a discard followed by writes grows the file, and
// a qcow2 file on a container of fixed size (an NBD export) runs out of
// room though it has free clusters. n is the number of clusters the write
// spans, which it allocates in one run where it can. img.mu held
// exclusively.
func (img *Image) reusePendingFrees(n int64) error {
	if img.pendingFrees < n {
		return nil // decrements that free nothing (a shared cluster copied) are no reason to flush
	}
	fsize, err := img.f.Size()
	if err != nil {
		return err
	}
	c, err := img.findFree(n)
	if err != nil || (c+n)<<img.cbits <= fsize {
		return nil // room below the end of the file, or let the write report it
	}
	return img.flushLocked(false)
}

// inPlace reports whether a write to bytes [from, to) of the cluster of e
// can go straight to its host cluster: with extended L2 entries, when the
// subclusters it touches are allocated.
func (img *Image) inPlace(e l2e, from, to int64) bool {
	if e.compressed() || !e.copied() || e.host() == 0 {
		return false
	}
	if img.ext {
		m := img.subMask(from, to)
		return uint32(e.bm)&m == m && uint32(e.bm>>32)&m == 0
	}
	return e.d&flagZero == 0
}

// subMask is the bitmap of the subclusters that bytes [from, to) of a
// cluster touch.
func (img *Image) subMask(from, to int64) uint32 {
	s0, s1 := uint(from>>img.scBits), uint((to-1)>>img.scBits)
	return uint32(uint64(1)<<(s1+1) - uint64(1)<<s0)
}

func (img *Image) writeInPlace(p []byte, off int64) (bool, error) {
	end := off + int64(len(p))
	type w struct{ host, goff, n int64 }
	var ws []w
	for pos := off; pos < end; {
		vc := pos >> img.cbits
		cend := min(end, (vc+1)<<img.cbits)
		e, err := img.lookup(vc)
		if err != nil {
			return false, err
		}
		if !img.inPlace(e, pos-vc<<img.cbits, cend-vc<<img.cbits) {
			return false, nil
		}
		if img.dataOverlap(e.host()) != "" {
			return false, nil // the exclusive path marks the image corrupt
		}
		h := e.host() + pos&(img.cs-1)
		if k := len(ws); k > 0 && ws[k-1].host+ws[k-1].n == h {
			ws[k-1].n += cend - pos
		} else {
			ws = append(ws, w{h, pos, cend - pos})
		}
		pos = cend
	}
	for _, x := range ws {
		if _, err := img.data().WriteAt(p[x.goff-off:x.goff-off+x.n], x.host); err != nil {
			return false, fmt.Errorf("qcow2: writing data at %#x: %w", x.host, err)
		}
	}
	return true, nil
}

// writeLocked is the allocating write path; img.mu held exclusively.
// Clusters it allocates get the whole cluster written (the rest copied from
// what the cluster read as before) before their L2 entries change. With
// fresh set, runs of whole clusters that need new host clusters are
// allocated but neither written nor linked: they are appended to *fresh
// for the caller to write and then link (linkRuns).
func (img *Image) writeLocked(p []byte, off int64, fresh *[]freshRun) error {
	end := off + int64(len(p))
	for pos := off; pos < end; {
		vc := pos >> img.cbits
		cstart := vc << img.cbits
		cend := min(end, cstart+img.cs)
		t, idx, err := img.l2ForWrite(vc)
		if err != nil {
			return err
		}
		e := img.getEntry(t, idx)
		if e.host() != 0 && !e.compressed() && e.copied() {
			if what := img.dataOverlap(e.host()); what != "" {
				return img.markCorrupt(what, e.host(), img.cs)
			}
		}
		if img.inPlace(e, pos-cstart, cend-cstart) {
			if _, err := img.data().WriteAt(p[pos-off:cend-off], e.host()+pos-cstart); err != nil {
				return fmt.Errorf("qcow2: writing data: %w", err)
			}
			pos = cend
			continue
		}
		reuse := e.host() != 0 && e.copied() && !e.compressed()
		if pos == cstart && cend == cstart+img.cs && reuse {
			// A preallocated zero cluster (or one with unallocated
			// subclusters) owned by us: overwrite it whole.
			if _, err := img.data().WriteAt(p[pos-off:cend-off], e.host()); err != nil {
				return fmt.Errorf("qcow2: writing data: %w", err)
			}
			img.setEntry(t, idx, img.dataEntry(e.host()))
			pos = cend
			continue
		}
		// A run of whole clusters that need fresh allocation is allocated
		// contiguously and written with one call.
		if pos == cstart && cend == cstart+img.cs {
			n := int64(1)
			for maxN := (end - cstart) >> img.cbits; n < maxN && n < 1<<img.l2Bits-int64(idx); n++ {
				e2 := img.getEntry(t, idx+int(n))
				if img.inPlace(e2, 0, img.cs) || e2.host() != 0 && e2.copied() {
					break
				}
			}
			host, err := img.allocData(vc, n)
			if err != nil {
				return err
			}
			if fresh != nil {
				*fresh = append(*fresh, freshRun{vc: vc, n: n, host: host, data: p[pos-off : pos-off+n<<img.cbits]})
				pos += n << img.cbits
				continue
			}
			if _, err := img.data().WriteAt(p[pos-off:pos-off+n<<img.cbits], host); err != nil {
				img.dropData(host, n)
				return fmt.Errorf("qcow2: writing data at %#x: %w", host, err)
			}
			img.linkData(t, idx, host, n)
			pos += n << img.cbits
			continue
		}
		if img.ext && !e.compressed() && (reuse || e.host() == 0 && uint32(e.bm) == 0) {
			if err := img.writeSubclusters(t, idx, e, pos, p[pos-off:cend-off]); err != nil {
				return err
			}
			pos = cend
			continue
		}
		// Partial cluster: merge with the current content. The buffer
		// is reused: a fresh cluster-sized allocation per small write
		// costs page faults that dominate sparse converts.
		bp := img.clusterBuf()
		buf := *bp
		err = img.readLocked(buf, cstart)
		if err != nil {
			img.bufPool.Put(bp)
			return err
		}
		copy(buf[pos-cstart:], p[pos-off:cend-off])
		host := e.host()
		if !reuse {
			if host, err = img.allocData(vc, 1); err != nil {
				img.bufPool.Put(bp)
				return err
			}
		}
		_, err = img.data().WriteAt(buf, host)
		img.bufPool.Put(bp)
		if err != nil {
			if !reuse {
				img.dropData(host, 1)
			}
			return fmt.Errorf("qcow2: writing data at %#x: %w", host, err)
		}
		img.setEntry(t, idx, img.dataEntry(host))
		if !reuse {
			img.freeEntry(e)
		}
		pos = cend
	}
	return nil
}

// writeSubclusters writes p at guest offset at, inside a cluster with extended L2 entry e
// that is unallocated or owned by this image, touching only the
// subclusters p covers, as QEMU does: the others keep what they were
// (unallocated ones still read from the backing file), so a small write
// neither copies the rest of the cluster nor writes zeros over it. Partial
// subclusters at the edges are merged with what they read as now.
func (img *Image) writeSubclusters(t *table, idx int, e l2e, at int64, p []byte) error {
	sc := int64(1) << img.scBits
	in := at & (img.cs - 1)
	cstart := at - in
	from, to := in&^(sc-1), (in+int64(len(p))+sc-1)&^(sc-1)
	data := p
	if from != in || to != in+int64(len(p)) {
		bp := img.clusterBuf()
		defer img.bufPool.Put(bp)
		data = (*bp)[:to-from]
		if err := img.readLocked(data, cstart+from); err != nil {
			return err
		}
		copy(data[in-from:], p)
	}
	host := e.host()
	if host == 0 {
		var err error
		if host, err = img.allocData(cstart>>img.cbits, 1); err != nil {
			return err
		}
	}
	if _, err := img.data().WriteAt(data, host+from); err != nil {
		if e.host() == 0 {
			img.dropData(host, 1)
		}
		return fmt.Errorf("qcow2: writing data at %#x: %w", host+from, err)
	}
	m := uint64(img.subMask(from, to))
	img.setEntry(t, idx, l2e{d: uint64(host) | flagCopied, bm: (e.bm | m) &^ (m << 32)})
	return nil
}

// clusterBuf returns a cluster-sized scratch buffer; give it back with
// img.bufPool.Put. Its content is undefined.
func (img *Image) clusterBuf() *[]byte {
	if bp, ok := img.bufPool.Get().(*[]byte); ok && int64(len(*bp)) == img.cs {
		return bp
	}
	b := make([]byte, img.cs)
	return &b
}

func (img *Image) dataEntry(host int64) l2e {
	e := l2e{d: uint64(host) | flagCopied}
	if img.ext {
		e.bm = 0xffffffff
	}
	return e
}

// afterMetaChange writes back metadata when the caches hold more dirty
// tables than they should. img.mu held exclusively.
func (img *Image) afterMetaChange() error {
	if img.l2c.overfull() || img.rbc.overfull() || len(img.pending) > 4096 {
		return img.flushLocked(false)
	}
	return nil
}

// flushLocked writes dirty metadata back in an order that keeps the image
// consistent at every point (only leaks possible): data and new refcounts
// first, then L2 tables, then L1 and header, and refcount decrements last.
func (img *Image) flushLocked(closing bool) error {
	if img.corrupt {
		return img.errCorrupted()
	}
	rbd := img.rbc.dirtyTables()
	l2d := img.l2c.dirtyTables()
	if err := img.checkDirtyTables(rbd, l2d); err != nil {
		return err
	}
	dirty := len(rbd) > 0 || len(l2d) > 0 || img.l1Dirty || img.rtDirty || img.headerDirty || len(img.pending) > 0
	if dirty && img.h.compatible&compatLazyRefcounts != 0 && !img.lazy && img.h.version >= 3 {
		// Lazy refcounts: the dirty bit must be on disk before refcounts
		// on disk may fall behind.
		img.h.incompatible |= incDirty
		if err := img.writeHeader(); err != nil {
			return err
		}
		if err := img.sync(); err != nil {
			return err
		}
		img.lazy = true
	}
	writeRefs := !img.lazy || closing || img.rtDirty || img.rbc.overfull()
	if writeRefs {
		if err := img.writeRefs(rbd); err != nil {
			return err
		}
	}
	if err := img.sync(); err != nil {
		return err
	}
	if img.rtMoved {
		if err := img.writeHeaderSynced(); err != nil {
			return err
		}
		img.rtMoved = false
	}
	if len(l2d) > 0 {
		sort.Slice(l2d, func(a, b int) bool { return l2d[a].off < l2d[b].off })
		for _, t := range l2d {
			if _, err := img.f.WriteAt(t.buf, t.off); err != nil {
				return fmt.Errorf("qcow2: writing L2 table at %#x: %w", t.off, err)
			}
			t.dirty = false
		}
		if err := img.sync(); err != nil {
			return err
		}
	}
	if img.l1Dirty {
		if err := img.writeL1(); err != nil {
			return err
		}
		if err := img.sync(); err != nil {
			return err
		}
	}
	if img.l1Moved || img.headerDirty {
		if err := img.writeHeaderSynced(); err != nil {
			return err
		}
		img.l1Moved = false
	}
	if len(img.pending) > 0 {
		if err := img.applyPending(); err != nil {
			return err
		}
		writeRefs = !img.lazy || closing || img.rtDirty || img.rbc.overfull()
		if writeRefs {
			rbd := img.rbc.dirtyTables()
			if err := img.checkDirtyTables(rbd, nil); err != nil {
				return err
			}
			if err := img.writeRefs(rbd); err != nil {
				return err
			}
			if err := img.sync(); err != nil {
				return err
			}
			if img.rtMoved {
				if err := img.writeHeaderSynced(); err != nil {
					return err
				}
				img.rtMoved = false
			}
		}
	}
	if closing && img.lazy {
		img.h.incompatible &^= incDirty
		if err := img.writeHeaderSynced(); err != nil {
			return err
		}
		img.lazy = false
	}
	img.l2c.evict()
	img.rbc.evict()
	return nil
}

// sync makes earlier writes durable before later ones are issued. With
// cache=unsafe nothing is promised after a crash, so the syncs are skipped;
// the write order stays the same.
func (img *Image) sync() error {
	if img.opts.Unsafe {
		return nil
	}
	if img.df != nil {
		// Guest data first: the metadata written after this refers to it.
		if err := img.df.Sync(); err != nil {
			return fmt.Errorf("qcow2: sync data file: %w", err)
		}
	}
	if err := img.f.Sync(); err != nil {
		return fmt.Errorf("qcow2: sync: %w", err)
	}
	return nil
}

func (img *Image) writeHeaderSynced() error {
	if err := img.writeHeader(); err != nil {
		return err
	}
	return img.sync()
}

// writeRefs writes refcount blocks and then the refcount table that points
// to them (the caller syncs).
func (img *Image) writeRefs(rbd []*table) error {
	for _, t := range rbd {
		if _, err := img.f.WriteAt(t.buf, t.off); err != nil {
			return fmt.Errorf("qcow2: writing refcount block at %#x: %w", t.off, err)
		}
		t.dirty = false
	}
	if img.rtDirty {
		if len(rbd) > 0 {
			if err := img.sync(); err != nil {
				return err
			}
		}
		if _, err := img.f.WriteAt(encodeTable(img.reftable), int64(img.h.reftableOffset)); err != nil {
			return fmt.Errorf("qcow2: writing refcount table: %w", err)
		}
		img.rtDirty = false
	}
	return nil
}

func (img *Image) writeL1() error {
	if _, err := img.f.WriteAt(encodeTable(img.l1), int64(img.h.l1Offset)); err != nil {
		return fmt.Errorf("qcow2: writing L1 table: %w", err)
	}
	img.l1Dirty = false
	return nil
}
