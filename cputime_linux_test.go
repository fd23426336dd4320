package limiter

import (
	"runtime"
	"syscall"
	"testing"
	"time"
)

// reportCPU makes b report the CPU time its goroutine's thread spent per
// operation ("cpu-ns/op"), which, unlike ns/op, a loaded machine does not
// inflate: ratios between benchmarks stay meaningful under load. Call it
// before the loop; it locks the goroutine to its thread.
func reportCPU(b *testing.B) {
	runtime.LockOSThread()
	start := threadCPU()
	b.Cleanup(func() {
		if b.N > 0 {
			b.ReportMetric(float64(threadCPU()-start)/float64(b.N), "cpu-ns/op")
		}
		runtime.UnlockOSThread()
	})
}

func threadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
