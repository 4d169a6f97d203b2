package imgtool

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"vdisk/block"
)

// IO runs a subset of qemu-io's commands against an open image, printing
// what qemu-io prints. Timing lines are printed only with Timing, so that
// output without it is deterministic.
type IO struct {
	Img    block.Image
	Out    io.Writer
	Timing bool
}

// ErrIOFailed marks a command that ran but failed (a pattern mismatch, an
// I/O error); its message has been printed already.
var ErrIOFailed = errors.New("command failed")

// maxIOLen bounds a single read or write so a typo cannot allocate
// gigabytes.
const maxIOLen = 1 << 30

// Run executes one command line such as "write -P 0xaa 0 64k".
func (q *IO) Run(line string) error {
	args := strings.Fields(line)
	if len(args) == 0 {
		return nil
	}
	switch args[0] {
	case "read", "r":
		return q.read(args[1:])
	case "write", "w":
		return q.write(args[1:])
	case "discard", "d":
		return q.discard(args[1:])
	case "flush", "f":
		if len(args) != 1 {
			return q.usage("flush")
		}
		if err := q.Img.Flush(); err != nil {
			return q.fail("flush failed: %v", err)
		}
		return nil
	case "map":
		if len(args) != 1 {
			return q.usage("map")
		}
		return q.imap()
	case "info":
		if len(args) != 1 {
			return q.usage("info")
		}
		return q.info()
	case "length", "len":
		fmt.Fprintln(q.Out, Cvtstr(float64(q.Img.Size())))
		return nil
	}
	return fmt.Errorf("command \"%s\" not found (known: read, write, discard, flush, map, info, length)", args[0])
}

var ioUsage = map[string]string{
	"read":    "read [-P PATTERN] [-v] [-q] OFF LEN",
	"write":   "write [-P PATTERN | -z [-u]] [-q] OFF LEN",
	"discard": "discard [-q] OFF LEN",
	"flush":   "flush",
	"map":     "map",
	"info":    "info",
}

func (q *IO) usage(cmd string) error {
	return fmt.Errorf("invalid arguments to %s; usage: %s", cmd, ioUsage[cmd])
}

func (q *IO) fail(format string, a ...any) error {
	fmt.Fprintf(q.Out, format+"\n", a...)
	return ErrIOFailed
}

type ioArgs struct {
	pattern  int
	hasPat   bool
	verbose  bool
	quiet    bool
	zero     bool
	unmap    bool
	off, len int64
}

// parseArgs reads getopt-style flags (those in allowed) and OFF LEN.
func (q *IO) parseArgs(cmd string, args []string, allowed string) (*ioArgs, error) {
	a := &ioArgs{}
	var pos []string
	for i := 0; i < len(args); i++ {
		s := args[i]
		if len(s) < 2 || s[0] != '-' || (s[1] >= '0' && s[1] <= '9') {
			pos = append(pos, s)
			continue
		}
		for k := 1; k < len(s); k++ {
			c := s[k]
			if !strings.ContainsRune(allowed, rune(c)) {
				return nil, fmt.Errorf("%s: invalid option -- '%c'; usage: %s", cmd, c, ioUsage[cmd])
			}
			switch c {
			case 'P':
				v := s[k+1:]
				if v == "" {
					if i+1 >= len(args) {
						return nil, fmt.Errorf("%s: -P needs a pattern", cmd)
					}
					i++
					v = args[i]
				}
				n, err := strconv.ParseInt(v, 0, 64)
				if err != nil || n < 0 || n > 255 {
					return nil, fmt.Errorf("%s: invalid pattern '%s' (a byte value such as 0xab)", cmd, v)
				}
				a.pattern, a.hasPat = int(n), true
				k = len(s)
			case 'v':
				a.verbose = true
			case 'q':
				a.quiet = true
			case 'z':
				a.zero = true
			case 'u':
				a.unmap = true
			}
		}
	}
	if len(pos) != 2 {
		return nil, q.usage(cmd)
	}
	var err error
	if a.off, err = block.ParseSize(pos[0]); err != nil {
		return nil, fmt.Errorf("%s: invalid offset '%s': %v", cmd, pos[0], err)
	}
	if a.len, err = block.ParseSize(pos[1]); err != nil {
		return nil, fmt.Errorf("%s: invalid length '%s': %v", cmd, pos[1], err)
	}
	return a, nil
}

func (q *IO) read(args []string) error {
	a, err := q.parseArgs("read", args, "Pvq")
	if err != nil {
		return err
	}
	if a.len > maxIOLen {
		return fmt.Errorf("read: length %d is larger than %d", a.len, maxIOLen)
	}
	buf := make([]byte, a.len)
	t := time.Now()
	if _, err := q.Img.ReadAt(buf, a.off); err != nil {
		return q.fail("read failed: %v", err)
	}
	el := time.Since(t)
	var res error
	if a.hasPat {
		for i, c := range buf {
			if c != byte(a.pattern) {
				fmt.Fprintf(q.Out, "Pattern verification failed at offset %d, %d bytes\n", a.off+int64(i), a.len)
				res = ErrIOFailed
				break
			}
		}
	}
	if a.quiet {
		return res
	}
	if a.verbose {
		q.dump(buf, a.off)
	}
	q.report("read", a.off, a.len, el)
	return res
}

func (q *IO) write(args []string) error {
	a, err := q.parseArgs("write", args, "Pzuq")
	if err != nil {
		return err
	}
	if a.zero && a.hasPat {
		return errors.New("write: -z and -P cannot be used together")
	}
	if a.unmap && !a.zero {
		return errors.New("write: -u requires -z")
	}
	t := time.Now()
	if a.zero {
		flags := block.ZeroFlags(0)
		if a.unmap {
			flags |= block.ZeroMayUnmap
		}
		if err := q.Img.WriteZeroes(a.off, a.len, flags); err != nil {
			return q.fail("write failed: %v", err)
		}
	} else {
		if a.len > maxIOLen {
			return fmt.Errorf("write: length %d is larger than %d", a.len, maxIOLen)
		}
		pat := 0xcd // qemu-io's default pattern
		if a.hasPat {
			pat = a.pattern
		}
		buf := make([]byte, a.len)
		for i := range buf {
			buf[i] = byte(pat)
		}
		if _, err := q.Img.WriteAt(buf, a.off); err != nil {
			return q.fail("write failed: %v", err)
		}
	}
	if !a.quiet {
		q.report("wrote", a.off, a.len, time.Since(t))
	}
	return nil
}

func (q *IO) discard(args []string) error {
	a, err := q.parseArgs("discard", args, "q")
	if err != nil {
		return err
	}
	t := time.Now()
	if err := q.Img.Discard(a.off, a.len); err != nil {
		return q.fail("discard failed: %v", err)
	}
	if !a.quiet {
		q.report("discard", a.off, a.len, time.Since(t))
	}
	return nil
}

// report prints qemu-io's "wrote 4096/4096 bytes at offset 0" and, with
// Timing, its statistics line.
func (q *IO) report(op string, off, n int64, el time.Duration) {
	fmt.Fprintf(q.Out, "%s %d/%d bytes at offset %d\n", op, n, n, off)
	if !q.Timing {
		return
	}
	secs := el.Seconds()
	if secs <= 0 {
		secs = 1e-9
	}
	fmt.Fprintf(q.Out, "%s, %d ops; %s (%s/sec and %.4f ops/sec)\n",
		Cvtstr(float64(n)), 1, timestr(el), Cvtstr(float64(n)/secs), 1/secs)
}

func timestr(d time.Duration) string {
	s := d.Seconds()
	return fmt.Sprintf("%05.2f sec", s)
}

// dump prints a buffer as qemu-io read -v does.
func (q *IO) dump(buf []byte, off int64) {
	for i := 0; i < len(buf); i += 16 {
		line := buf[i:min(len(buf), i+16)]
		var b strings.Builder
		fmt.Fprintf(&b, "%08x:  ", off+int64(i))
		for _, c := range line {
			fmt.Fprintf(&b, "%02x ", c)
		}
		b.WriteByte(' ')
		for _, c := range line {
			if c >= 0x20 && c < 0x7f {
				b.WriteByte(c)
			} else {
				b.WriteByte('.')
			}
		}
		fmt.Fprintln(q.Out, b.String())
	}
}

// imap prints which ranges this layer allocates, as qemu-io's map.
func (q *IO) imap() error {
	size := q.Img.Size()
	type run struct {
		off, n int64
		alloc  bool
	}
	var runs []run
	for off := int64(0); off < size; {
		exts, err := q.Img.BlockStatus(off, size-off)
		if err != nil {
			return q.fail("map failed: %v", err)
		}
		if len(exts) == 0 {
			return q.fail("map failed: no block status at offset %d", off)
		}
		for _, e := range exts {
			alloc := e.Status&(block.StatusData|block.StatusZero) != 0
			if k := len(runs); k > 0 && runs[k-1].alloc == alloc {
				runs[k-1].n += e.Length
			} else {
				runs = append(runs, run{e.Offset, e.Length, alloc})
			}
			off = e.Offset + e.Length
		}
	}
	for _, r := range runs {
		what := "not allocated"
		if r.alloc {
			what = "    allocated"
		}
		fmt.Fprintf(q.Out, "%s (0x%x) bytes %s at offset %s (0x%x)\n", Cvtstr(float64(r.n)), r.n, what, Cvtstr(float64(r.off)), r.off)
	}
	return nil
}

func (q *IO) info() error {
	in, err := q.Img.Info()
	if err != nil {
		return q.fail("info failed: %v", err)
	}
	fmt.Fprintf(q.Out, "format name: %s\n", in.Format)
	fmt.Fprintf(q.Out, "cluster size: %s\n", Cvtstr(float64(in.ClusterSize)))
	var vmState int64
	if v, ok := q.Img.(interface{ VMStateOffset() int64 }); ok {
		vmState = v.VMStateOffset()
	}
	fmt.Fprintf(q.Out, "vm state offset: %s\n", Cvtstr(float64(vmState)))
	if in.FormatSpecific != nil {
		var b strings.Builder
		dumpHuman(&b, toQ(in.FormatSpecific.Data), 1)
		fmt.Fprintf(q.Out, "Format specific information:\n%s", b.String())
	}
	return nil
}

// Cvtstr formats a byte count as qemu-io does: "4 KiB", "1.500 MiB",
// "100 bytes".
func Cvtstr(v float64) string {
	units := []struct {
		shift  uint
		suffix string
	}{{60, " EiB"}, {50, " PiB"}, {40, " TiB"}, {30, " GiB"}, {20, " MiB"}, {10, " KiB"}}
	s, suffix := "", " bytes"
	for _, u := range units {
		if v >= float64(uint64(1)<<u.shift) {
			s, suffix = fmt.Sprintf("%.3f", v/float64(uint64(1)<<u.shift)), u.suffix
			break
		}
	}
	if s == "" {
		s = fmt.Sprintf("%f", v)
	}
	if i := strings.Index(s, ".000"); i >= 0 {
		return s[:i] + suffix
	}
	return s + suffix
}
