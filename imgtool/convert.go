package imgtool

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"vdisk/block"
)

// Defaults of the convert engine, as qemu-img's.
const (
	DefaultChunkSize = 2 << 20 // bytes per request
	DefaultWorkers   = 8       // requests in flight (-m)
	DefaultSparse    = 4096    // -S: shortest run of zeros left unallocated
	MaxWorkers       = 16
	// writebackEvery is how much a durable convert copies between
	// requests to start writing the target back (see writeback).
	writebackEvery = 32 << 20
)

// CopyOptions steer the copy engine.
type CopyOptions struct {
	// Sparse is the shortest run of zero bytes, aligned to its own size,
	// that is skipped rather than written (-S). 0 writes every byte,
	// zeros included, so the target ends up fully allocated.
	Sparse int64
	// Compress writes full clusters with block.CompressedWriter.
	Compress bool
	// OutOfOrder lets writes complete in any order (-W). Without it each
	// chunk is written only after the one before it, so formats that
	// allocate as they go lay the target out in guest order.
	OutOfOrder bool
	// Workers is the number of requests in flight (-m).
	Workers int
	// ChunkSize is the size of one request.
	ChunkSize int64
	// TargetZeroed tells the engine that the target already reads as
	// zeros (a freshly created image), so zero ranges need no writes.
	TargetZeroed bool
	// NoFlush leaves the final Flush of the target to the caller (or to
	// nobody, for cache=unsafe).
	NoFlush bool
	// Progress, if set, is called with bytes done and the total, from any
	// goroutine, after each chunk.
	Progress func(done, total int64)
}

func (o *CopyOptions) normalize() error {
	if o.Workers == 0 {
		o.Workers = DefaultWorkers
	}
	if o.Workers < 1 || o.Workers > MaxWorkers {
		return fmt.Errorf("invalid number of parallel requests %d (allowed: 1 to %d)", o.Workers, MaxWorkers)
	}
	if o.ChunkSize <= 0 {
		o.ChunkSize = DefaultChunkSize
	}
	if o.Sparse < 0 || o.Sparse%512 != 0 || o.Sparse > 16<<20 {
		return fmt.Errorf("invalid sparse size %d: it must be a multiple of 512 up to 16 MiB", o.Sparse)
	}
	if o.Sparse > 0 && o.ChunkSize%o.Sparse != 0 {
		o.ChunkSize = (o.ChunkSize + o.Sparse - 1) / o.Sparse * o.Sparse
	}
	return nil
}

type copyJob struct {
	seq  int64
	off  int64
	n    int64
	zero bool // the source reads as zeros here
}

// Copy copies the content of src into dst, which must be at least as large.
// It walks src's block status to skip holes, reads data in large chunks
// with several workers and leaves zero runs unallocated.
func Copy(src, dst block.Image, o CopyOptions) error {
	if err := o.normalize(); err != nil {
		return err
	}
	size := src.Size()
	if dst.Size() < size {
		return fmt.Errorf("target is smaller (%d bytes) than the source (%d bytes)", dst.Size(), size)
	}
	var cw block.CompressedWriter
	cluster := int64(0)
	if o.Compress {
		var ok bool
		cw, ok = dst.(block.CompressedWriter)
		if !ok {
			return errors.New("compression not supported for this file format")
		}
		info, err := dst.Info()
		if err != nil {
			return err
		}
		cluster = info.ClusterSize
		if cluster <= 0 {
			cluster = 64 << 10
		}
		if o.ChunkSize%cluster != 0 {
			o.ChunkSize = (o.ChunkSize + cluster - 1) / cluster * cluster
		}
	}

	c := &copier{src: src, dst: dst, o: o, cw: cw, cluster: cluster, size: size}
	c.pc, _ = cw.(block.Precompressor)
	c.cond = sync.NewCond(&c.mu)
	jobs := make(chan copyJob, o.Workers)
	var wg sync.WaitGroup
	for range o.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, o.ChunkSize)
			for j := range jobs {
				if c.failed.Load() {
					continue
				}
				if err := c.do(j, buf); err != nil {
					c.fail(err)
				}
			}
		}()
	}
	perr := c.produce(jobs)
	close(jobs)
	wg.Wait()
	if perr != nil {
		return perr
	}
	if err := c.error(); err != nil {
		return err
	}
	if o.NoFlush {
		return nil
	}
	return dst.Flush()
}

type copier struct {
	src, dst block.Image
	o        CopyOptions
	cw       block.CompressedWriter
	pc       block.Precompressor // cw, when it compresses apart from storing
	cluster  int64
	size     int64
	done     atomic.Int64

	mu        sync.Mutex
	cond      *sync.Cond
	nextWrite int64 // seq of the job whose writes may go next (ordered mode)
	err       error
	failed    atomic.Bool
}

func (c *copier) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.failed.Store(true)
	c.cond.Broadcast()
	c.mu.Unlock()
}

func (c *copier) error() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// produce turns src's block status into chunk-sized jobs, in guest order.
func (c *copier) produce(jobs chan<- copyJob) error {
	const window = 1 << 30 // block status asked a bounded range at a time
	seq := int64(0)
	for off := int64(0); off < c.size; {
		var exts []block.Extent
		err := safely(func() (err error) {
			exts, err = block.MapChain(c.src, off, min(window, c.size-off))
			return err
		})
		if err != nil {
			return &copyError{read: true, what: "reading block status", off: off, err: err}
		}
		for _, e := range exts {
			zero := e.Status&block.StatusZero != 0
			if zero && c.o.TargetZeroed && c.o.Sparse > 0 {
				c.progress(e.Length)
				continue
			}
			for p, end := e.Offset, e.Offset+e.Length; p < end; {
				// Chunks end on ChunkSize boundaries so requests stay aligned.
				n := min(end, (p/c.o.ChunkSize+1)*c.o.ChunkSize) - p
				if c.failed.Load() {
					return nil
				}
				jobs <- copyJob{seq: seq, off: p, n: n, zero: zero}
				seq++
				p += n
			}
		}
		off += sumLen(exts)
	}
	return nil
}

// copyError is a failure of one side of a copy, so that Convert can name
// the image it happened in.
type copyError struct {
	read bool // in the source, else in the target
	what string
	off  int64
	err  error
}

func (e *copyError) Error() string {
	return fmt.Sprintf("%s at byte %d: %v", e.what, e.off, e.err)
}

func (e *copyError) Unwrap() error { return e.err }

// safely runs f and turns a panic in it (a driver bug) into an error: the
// copy workers are goroutines of their own, where a panic would end the
// program with a stack trace instead of an error naming the image.
func safely(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	return f()
}

func sumLen(exts []block.Extent) int64 {
	var n int64
	for _, e := range exts {
		n += e.Length
	}
	return n
}

func (c *copier) progress(n int64) {
	d := c.done.Add(n)
	if c.o.Progress != nil {
		c.o.Progress(d, c.size)
	}
}

// do reads one chunk and writes what is not zero, in order unless -W.
// The writes are planned (and compressed, with -c) before the chunk waits
// for its turn, so that in order too every worker compresses at once and
// only the stores are serial.
func (c *copier) do(j copyJob, buf []byte) error {
	b := buf[:j.n]
	if j.zero && c.o.Sparse > 0 {
		// Known zeros need neither a buffer nor a scan.
		b = nil
	} else if j.zero {
		clear(b)
	} else if err := safely(func() error { _, err := c.src.ReadAt(b, j.off); return err }); err != nil {
		return &copyError{read: true, what: "error while reading", off: j.off, err: err}
	}
	var ops []writeOp
	var planErr error
	if b == nil {
		ops = c.zeroOp(nil, j.off, j.n)
	} else {
		planErr = safely(func() (err error) { ops, err = c.plan(b, j.off); return err })
	}
	if !c.o.OutOfOrder {
		c.mu.Lock()
		for c.nextWrite != j.seq && c.err == nil {
			c.cond.Wait()
		}
		failed := c.err != nil
		c.mu.Unlock()
		if failed {
			return nil
		}
		defer func() {
			c.mu.Lock()
			c.nextWrite++
			c.cond.Broadcast()
			c.mu.Unlock()
		}()
	}
	// A failed plan is reported in its turn: in order, the first error is
	// then the one at the lowest offset, as with a serial copy.
	if planErr != nil {
		return &copyError{what: "error while writing", off: j.off, err: planErr}
	}
	for _, op := range ops {
		if err := safely(op.run); err != nil {
			return &copyError{what: "error while writing", off: op.off, err: err}
		}
	}
	c.progress(j.n)
	return nil
}

// writeOp is one write of a chunk: data, zeros, or clusters compressed
// already, stored by run.
type writeOp struct {
	off int64
	run func() error
}

// plan turns the chunk b at off into writes, skipping or zeroing runs of
// zero blocks.
func (c *copier) plan(b []byte, off int64) ([]writeOp, error) {
	if c.o.Sparse == 0 {
		return c.dataOps(nil, b, off)
	}
	gran := c.o.Sparse
	if c.cw != nil {
		gran = c.cluster
	}
	if block.IsZero(b) {
		return c.zeroOp(nil, off, int64(len(b))), nil
	}
	// Walk blocks aligned to gran; a run of zero blocks is skipped, a
	// run of others written in one request.
	var ops []writeOp
	var err error
	runStart, runZero := int64(0), false
	flush := func(p int64) {
		if err != nil {
			return
		}
		if runZero {
			ops = c.zeroOp(ops, off+runStart, p-runStart)
		} else {
			ops, err = c.dataOps(ops, b[runStart:p], off+runStart)
		}
	}
	for p := int64(0); p < int64(len(b)); {
		q := min(int64(len(b)), ((off+p)/gran+1)*gran-off)
		z := block.IsZero(b[p:q])
		if p == 0 {
			runZero = z
		} else if z != runZero {
			flush(p)
			runStart, runZero = p, z
		}
		p = q
	}
	flush(int64(len(b)))
	return ops, err
}

func (c *copier) zeroOp(ops []writeOp, off, n int64) []writeOp {
	if c.o.TargetZeroed {
		return ops
	}
	return append(ops, writeOp{off, func() error { return c.dst.WriteZeroes(off, n, block.ZeroMayUnmap) }})
}

// dataOps appends the writes of data b at off. Whole clusters go
// compressed with -c (a partial one at the very end of the image too, when
// it is the image's last cluster), compressed here if the target can.
func (c *copier) dataOps(ops []writeOp, b []byte, off int64) ([]writeOp, error) {
	if c.cw == nil {
		return append(ops, writeOp{off, func() error { _, err := c.dst.WriteAt(b, off); return err }}), nil
	}
	n, size := int64(len(b)), c.dst.Size()
	for p := int64(0); p < n; {
		at := off + p
		q := min(n, (at/c.cluster+1)*c.cluster-off)
		if at%c.cluster != 0 || q-p != c.cluster && off+q != size {
			d := b[p:q]
			ops = append(ops, writeOp{at, func() error { _, err := c.dst.WriteAt(d, at); return err }})
			p = q
			continue
		}
		// Whole clusters that follow go in the same request.
		for q < n && (min(n, q+c.cluster)-q == c.cluster || off+n == size) {
			q = min(n, q+c.cluster)
		}
		d := b[p:q]
		if c.pc != nil {
			store, err := c.pc.Precompress(d, at)
			if err != nil {
				return nil, err
			}
			ops = append(ops, writeOp{at, store})
		} else {
			ops = append(ops, writeOp{at, func() error { return c.cw.WriteCompressed(d, at) }})
		}
		p = q
	}
	return ops, nil
}

// ConvertOptions are vdisk convert's settings.
type ConvertOptions struct {
	SrcFormat string // -f; empty probes
	DstFormat string // -O; empty means raw
	// CreateOptions is the -o string for the target's format.
	CreateOptions string
	// NoCreate writes into an existing target (-n) instead of creating it.
	NoCreate   bool
	ForceShare bool  // -U for the source
	CacheSize  int64 // read cache for the source
	// Unsafe skips making the target durable at the end (qemu-img's
	// default cache=unsafe for convert targets). Without it, Convert
	// returns only once the target is on stable storage.
	Unsafe bool
	Copy   CopyOptions
}

// Convert copies image src into a new image dst of another format. The
// target gets the source's virtual size; a target that fails half way is
// removed if this call created it.
func Convert(src, dst string, o ConvertOptions) (err error) {
	if block.IsVolatile(dst) && o.DstFormat != "" && o.DstFormat != "raw" && o.DstFormat != "mem" {
		// The image created on a RAM disk would be gone by the time it is
		// opened for the copy; only raw needs nothing from the create.
		return fmt.Errorf("%s: a RAM disk target is new and empty on every open, so it takes only raw data, not a %s image (use -O raw)", dst, o.DstFormat)
	}
	in, err := block.Open(src, block.OpenOptions{Format: o.SrcFormat, ReadOnly: true, ForceShare: o.ForceShare, CacheSize: o.CacheSize})
	if err != nil {
		return err
	}
	defer in.Close()
	dstFmt := o.DstFormat
	if dstFmt == "" {
		dstFmt = "raw"
	}
	created := false
	if !o.NoCreate {
		opts, err := CreateOptionsFor(dstFmt, o.CreateOptions, in.Size())
		if err != nil {
			return fmt.Errorf("%s: %w", dst, err)
		}
		if err := block.Create(dst, dstFmt, opts); err != nil {
			return err
		}
		created = block.IsLocalName(dst)
	}
	out, err := block.Open(dst, block.OpenOptions{Format: dstFmt, Unsafe: o.Unsafe})
	if err != nil {
		if created {
			os.Remove(dst)
		}
		return err
	}
	cp := o.Copy
	// Close flushes (unless Unsafe), so a Flush here would only sync twice.
	cp.NoFlush = true
	// A new local file (or RAM disk) reads as zeros; a container behind
	// another protocol (an NBD export) may hold old data, so zeros are
	// written there explicitly.
	cp.TargetZeroed = !o.NoCreate && (block.IsLocalName(dst) || block.IsVolatile(dst))
	if !o.Unsafe && block.IsLocalName(dst) {
		if wb := newWriteback(dst); wb != nil {
			defer wb.close()
			var last atomic.Int64
			prev := cp.Progress
			cp.Progress = func(done, total int64) {
				if prev != nil {
					prev(done, total)
				}
				if l := last.Load(); done-l >= writebackEvery && last.CompareAndSwap(l, done) {
					wb.start()
				}
			}
		}
	}
	cerr := Copy(in, out, cp)
	if cerr != nil {
		failed := dst
		if ce := (*copyError)(nil); errors.As(cerr, &ce) && ce.read {
			failed = src
		}
		cerr = fmt.Errorf("%s: %w", failed, cerr)
	}
	if err := safely(out.Close); err != nil && cerr == nil {
		cerr = fmt.Errorf("%s: %w", dst, err)
	}
	if cerr != nil && created {
		os.Remove(dst)
	}
	return cerr
}

// CreateOptionsFor parses an -o string for format and sets the size
// unless the string gives one.
func CreateOptionsFor(format, optStr string, size int64) (block.Options, error) {
	f, err := block.Lookup(format)
	if err != nil {
		return nil, err
	}
	pairs, err := block.SplitOptionString(optStr)
	if err != nil {
		return nil, err
	}
	hasSize := false
	for _, p := range pairs {
		if p[0] == "size" {
			hasSize = true
		}
	}
	if !hasSize && size >= 0 {
		pairs = append(pairs, [2]string{"size", strconv.FormatInt(size, 10)})
	}
	opts, err := block.ParseOptions(f.CreateOptions, pairs)
	if err != nil {
		return nil, fmt.Errorf("invalid options for format '%s': %w", f.Name, err)
	}
	return opts, nil
}
