package block

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// MaxBackingDepth bounds backing chains (loops are refused apart). QEMU
// 7.2 has no limit of its own: it opens chains of a thousand images and
// overflows its stack a little beyond (about 1085 on an 8 MiB stack), so
// every chain qemu-img handles opens here too, and deeper ones are refused
// with an error rather than a crash.
const MaxBackingDepth = 1000

// OpenOptions control how an image is opened.
type OpenOptions struct {
	// Format names the format driver; empty means probe.
	Format string
	// ReadOnly opens the image and its container read-only. A read-only
	// open never modifies the container, not even a header flag.
	ReadOnly bool
	// ForceShare skips the QEMU-compatible image locks (-U). Only for
	// read-only opens.
	ForceShare bool
	// NoBacking opens the image without its backing chain; reads of
	// unallocated ranges then return zeros.
	NoBacking bool
	// CacheSize, when positive, puts a read cache of that many bytes in
	// front of the image.
	CacheSize int64
	// L2CacheSize and RefcountCacheSize, when positive, size a format's
	// metadata caches in bytes (QEMU's l2-cache-size and
	// refcount-cache-size, per image and not inherited by its backing
	// chain); 0 keeps the driver's default. Formats without such caches
	// ignore them.
	L2CacheSize, RefcountCacheSize int64
	// NoCache is QEMU's cache.direct=on (cache=none): reads and writes
	// of the image's local files that meet their direct I/O alignment
	// bypass the host page cache, so that data served to a cache of its
	// own (an attached block device) is not cached twice. Other I/O stays
	// buffered. Backing and data files inherit it.
	NoCache bool
	// Unsafe is QEMU's cache=unsafe, qemu-img convert's default for its
	// target: Flush and Close need not make data durable. For scratch
	// copies that can be redone after a crash. Drivers may ignore it.
	Unsafe bool
	// Resize is set by an opener that will change the image's size: it
	// takes QEMU's "resize" permission, which a writer of a raw image
	// otherwise leaves alone so that raw readers, who refuse resizes,
	// can share the image with it (as qemu-nbd and qemu-img resize do).
	Resize bool
	// Check is set by check: a driver may then tolerate damage it would
	// refuse otherwise, report it from Check and, on a writable open,
	// repair it there. Such an open is for Check alone.
	Check bool

	// Probed is set by Open when the format was probed rather than named;
	// the raw driver uses it to refuse writes that would change the
	// probing result.
	Probed bool
	// Depth is the position of this image in a backing chain (0 = top).
	Depth int
	// Chain identifies the images above this one in a backing chain (and,
	// once Open has run, this one too), so OpenBacking can refuse a chain
	// that loops back on itself.
	Chain []string
}

// OpenFlags are what a protocol needs to open its container.
type OpenFlags struct {
	ReadOnly   bool
	ForceShare bool
	// Create makes a new, empty container, replacing an existing one.
	Create bool
	// NoCache asks for direct I/O where it is aligned (OpenOptions.NoCache);
	// protocols without a page cache ignore it.
	NoCache bool
	// LockLater leaves QEMU's image locks to a call of Locker.Lock, for
	// an opener that must read the container (probe its format) before it
	// knows which locks to take. Ignored with Create.
	LockLater bool
	// Resize, on a writable open, takes the "resize" permission even
	// where Locker.Lock is told the format keeps no metadata in the
	// container (OpenOptions.Resize).
	Resize bool
	// CreateSize, with Create, is the length the format will give the
	// container. A protocol that can tell it cannot hold that many bytes
	// (a file system's maximum file size) fails before it empties an
	// existing container.
	CreateSize int64
}

// Locker is implemented by containers that take QEMU's image locks (the
// local file protocol). One opened with OpenFlags.LockLater takes them
// when Lock is called.
type Locker interface {
	// Lock takes the locks for the flags the container was opened with.
	// dataOnly says the container holds nothing but the image's data (a
	// raw image, not a backing file): a read-only open then lets others
	// write the container, not resize it, as qemu-nbd -r does, and a
	// writable one takes the "resize" permission only with
	// OpenFlags.Resize, as qemu-io and qemu-nbd do.
	Lock(dataOnly bool) error
}

// Protocol opens containers by name: a local file, an NBD URI.
type Protocol struct {
	Name string
	// Match reports whether a name belongs to this protocol (a URI scheme,
	// a prefix). The file protocol matches what no other does.
	Match func(name string) bool
	Open  func(name string, flags OpenFlags) (File, error)
	// Volatile: every open gets a new, empty container (a RAM disk), so
	// nothing written through one open is there for the next.
	Volatile bool
}

var protocols struct {
	sync.RWMutex
	list     []*Protocol
	fallback *Protocol
}

// RegisterProtocol adds a protocol. One registered with a nil Match is the
// fallback for plain names (the local file protocol).
func RegisterProtocol(p *Protocol) {
	protocols.Lock()
	defer protocols.Unlock()
	if p.Match == nil {
		protocols.fallback = p
		return
	}
	protocols.list = append(protocols.list, p)
}

// protocolFor returns the protocol whose Match takes name; when none does,
// the fallback (which may be nil), with matched false.
func protocolFor(name string) (p *Protocol, matched bool) {
	protocols.RLock()
	defer protocols.RUnlock()
	for _, q := range protocols.list {
		if q.Match(name) {
			return q, true
		}
	}
	return protocols.fallback, false
}

// OpenFile opens a container through the protocol its name selects.
func OpenFile(name string, flags OpenFlags) (File, error) {
	p, _ := protocolFor(name)
	if p == nil {
		return nil, fmt.Errorf("%s: no protocol driver for this name", name)
	}
	return p.Open(name, flags)
}

// IsVolatile reports whether name belongs to a Volatile protocol.
func IsVolatile(name string) bool {
	p, matched := protocolFor(name)
	return matched && p.Volatile
}

// IsLocalName reports whether name refers to a local file rather than a
// container of another protocol (nbd://…, mem:…).
func IsLocalName(name string) bool {
	_, matched := protocolFor(name)
	return !matched
}

// Open opens the image called name: it opens the container through its
// protocol, picks the format (named or probed) and hands the container to
// the format driver.
func Open(name string, opts OpenOptions) (Image, error) {
	if opts.Depth > MaxBackingDepth {
		return nil, fmt.Errorf("%s: backing chain deeper than %d images", name, MaxBackingDepth)
	}
	var format *Format
	if opts.Format != "" {
		f, err := Lookup(opts.Format)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		format = f
	}
	f, err := OpenFile(name, OpenFlags{ReadOnly: opts.ReadOnly, ForceShare: opts.ForceShare, NoCache: opts.NoCache, Resize: opts.Resize, LockLater: true})
	if err != nil {
		return nil, err
	}
	if format == nil {
		head, tail, err := ReadProbe(f)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: probing format: %w", name, err)
		}
		format, _ = Probe(head, tail, name)
		if format == nil {
			f.Close()
			return nil, fmt.Errorf("%s: could not determine the image format", name)
		}
		opts.Probed = true
		opts.Format = format.Name
	}
	if l, ok := f.(Locker); ok {
		// A backing file is never shared for writing: its readers (the
		// overlays) cannot tell that it changed under them.
		if err := l.Lock(format.ReadersShareWrite && opts.Depth == 0); err != nil {
			f.Close()
			return nil, err
		}
	}
	opts.Chain = append(opts.Chain[:len(opts.Chain):len(opts.Chain)], identity(name, f))
	if format.Open == nil {
		f.Close()
		return nil, fmt.Errorf("%s: format '%s' cannot open images", name, format.Name)
	}
	img, err := format.Open(f, &opts)
	if err != nil {
		return nil, prefixName(name, err)
	}
	if opts.CacheSize > 0 && cacheWrapper != nil {
		img = cacheWrapper(img, opts.CacheSize)
	}
	return img, nil
}

// cacheWrapper is installed by the read-cache implementation so that Open
// can offer it without this file depending on it.
var cacheWrapper func(Image, int64) Image

// SetCacheWrapper installs the read cache used for OpenOptions.CacheSize.
func SetCacheWrapper(w func(Image, int64) Image) { cacheWrapper = w }

// prefixName adds the image name to an error unless it already mentions it.
func prefixName(name string, err error) error {
	if strings.Contains(err.Error(), name) {
		return err
	}
	return fmt.Errorf("%s: %w", name, err)
}

// ReadProbe reads what probing looks at: up to ProbeHeadSize bytes from the
// start of the container and up to ProbeTailSize bytes from its end.
func ReadProbe(f File) (head, tail []byte, err error) {
	size, err := f.Size()
	if err != nil {
		return nil, nil, err
	}
	head = make([]byte, min(size, ProbeHeadSize))
	if _, err := f.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	tail = make([]byte, min(size, ProbeTailSize))
	if _, err := f.ReadAt(tail, size-int64(len(tail))); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, err
	}
	return head, tail, nil
}

// Create makes a new image of the given format. opts are already parsed
// against the format's CreateOptions. A request the format's CheckCreate
// refuses changes nothing; a create that fails later removes the file it
// made, so no partial image is left behind.
func Create(name, format string, opts Options) error {
	fmtDrv, err := Lookup(format)
	if err != nil {
		return err
	}
	if fmtDrv.Create == nil {
		return fmt.Errorf("%s: format '%s' does not support image creation", name, fmtDrv.Name)
	}
	var hostSize int64
	if fmtDrv.CheckCreate != nil {
		if hostSize, err = fmtDrv.CheckCreate(name, opts); err != nil {
			return prefixName(name, err)
		}
	}
	local := IsLocalName(name)
	existed := false
	if local {
		_, statErr := os.Stat(name)
		existed = statErr == nil
	}
	removeNew := func() {
		if local && !existed {
			os.Remove(name)
		}
	}
	f, err := OpenFile(name, OpenFlags{Create: true, CreateSize: hostSize})
	if err != nil {
		removeNew()
		return err
	}
	cerr := fmtDrv.Create(f, opts)
	if cerr == nil {
		cerr = f.Sync()
	}
	closeErr := f.Close()
	if cerr == nil {
		cerr = closeErr
	}
	if cerr != nil {
		removeNew()
		return prefixName(name, cerr)
	}
	return nil
}

// ResolveBacking turns a backing file name stored in an image into the name
// to open: relative names are relative to the directory of the image that
// refers to them, as in QEMU.
func ResolveBacking(imageName, backing string) string {
	if backing == "" || filepath.IsAbs(backing) || !IsLocalName(backing) || !IsLocalName(imageName) {
		return backing
	}
	return filepath.Join(filepath.Dir(imageName), backing)
}

// OpenBacking opens the backing image of a layer at depth parentDepth,
// read-only, with the same sharing as its parent. A backing file that is
// already part of the chain above is refused, as qemu-img does.
func OpenBacking(imageName, backing, format string, parent *OpenOptions) (Image, error) {
	full := ResolveBacking(imageName, backing)
	id := full
	if IsLocalName(full) {
		if st, err := os.Stat(full); err == nil {
			id = fileIdentity(full, st)
		}
	}
	if slices.Contains(parent.Chain, id) {
		return nil, fmt.Errorf("backing file '%s' creates an infinite loop", backing)
	}
	img, err := Open(full, OpenOptions{
		Format:     format,
		ReadOnly:   true,
		ForceShare: parent.ForceShare,
		NoCache:    parent.NoCache,
		Depth:      parent.Depth + 1,
		Chain:      parent.Chain,
	})
	if err != nil {
		return nil, fmt.Errorf("could not open backing file: %w", err)
	}
	return img, nil
}

// identity names an open container for loop detection: device and inode
// for local files, whatever their path, else the name.
func identity(name string, f File) string {
	if st, ok := f.(Stater); ok {
		if fi, err := st.Stat(); err == nil {
			return fileIdentity(name, fi)
		}
	}
	return name
}

func fileIdentity(name string, fi os.FileInfo) string {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return fmt.Sprintf("file:%d:%d", st.Dev, st.Ino)
	}
	return name
}
