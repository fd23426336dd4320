// Command installcheck proves that github.com/apiquota/limiter/redisstore
// installs for a user: it builds a file-system module proxy from the working
// tree, holding the core at v0.2.0 and redisstore at v0.2.0 (the tags v0.2.0
// and redisstore/v0.2.0), then in a fresh module outside the repository runs
// `go get github.com/apiquota/limiter/redisstore@v0.2.0` and `go build`,
// with GOWORK=off, so that nothing but the proxy supplies the two modules.
// Other modules come from the local module cache, then GOPROXY.
//
// Run it from its directory (it is a module of its own, so that
// golang.org/x/mod never enters redisstore's requirements):
//
//	cd redisstore/internal/installcheck && GOWORK=off go run .
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/zip"
)

const (
	corePath  = "github.com/apiquota/limiter"
	storePath = corePath + "/redisstore"
	version   = "v0.2.0"
)

const appMain = `package main

import (
	"fmt"
	"time"

	"github.com/apiquota/limiter/redisstore"
	"github.com/redis/go-redis/v9"
)

func main() {
	_, err := redisstore.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), "k", 10, time.Second)
	fmt.Println(err)
}
`

func main() {
	repo := flag.String("repo", "../../..", "the repository's root")
	keep := flag.Bool("keep", false, "keep the work directory")
	flag.Parse()
	log.SetFlags(0)
	root, err := filepath.Abs(*repo)
	check(err)
	work, err := os.MkdirTemp("", "installcheck")
	check(err)
	if !*keep {
		defer os.RemoveAll(work)
	}
	proxy := filepath.Join(work, "proxy")
	publish(proxy, corePath, root)
	publish(proxy, storePath, filepath.Join(root, "redisstore"))

	app := filepath.Join(work, "app")
	check(os.MkdirAll(app, 0o755))
	check(os.WriteFile(filepath.Join(app, "go.mod"), []byte("module example.com/app\n\ngo 1.25.0\n"), 0o644))
	check(os.WriteFile(filepath.Join(app, "main.go"), []byte(appMain), 0o644))

	cache := strings.TrimSpace(output(root, nil, "go", "env", "GOMODCACHE"))
	upstream := strings.TrimSpace(output(root, nil, "go", "env", "GOPROXY"))
	env := []string{
		"GOWORK=off",
		"GOFLAGS=-mod=mod -modcacherw",
		"GOMODCACHE=" + filepath.Join(work, "modcache"), // never the stale v0.2.0 of an earlier run
		"GOPROXY=" + fileURL(proxy) + "," + fileURL(filepath.Join(cache, "cache", "download")) + "," + upstream,
		"GONOSUMDB=" + corePath, // unpublished: no checksum database entry
		"GOPRIVATE=",
	}
	run(app, env, "go", "get", storePath+"@"+version)
	run(app, env, "go", "build", "-o", filepath.Join(work, "app.bin"), ".")
	fmt.Print(output(app, env, "go", "list", "-m", corePath, storePath))
	fmt.Println("installcheck: ok: a fresh module gets and builds", storePath+"@"+version)
}

// publish writes module path at version from dir into the file-system proxy.
func publish(proxy, path, dir string) {
	esc, err := module.EscapePath(path)
	check(err)
	at := filepath.Join(proxy, filepath.FromSlash(esc), "@v")
	check(os.MkdirAll(at, 0o755))
	m := module.Version{Path: path, Version: version}
	f, err := os.Create(filepath.Join(at, version+".zip"))
	check(err)
	check(zip.CreateFromDir(f, m, dir))
	check(f.Close())
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	check(err)
	if strings.Contains(string(gomod), "\nreplace") {
		log.Fatalf("installcheck: %s/go.mod has a replace directive; a published module must not", dir)
	}
	check(os.WriteFile(filepath.Join(at, version+".mod"), gomod, 0o644))
	info := fmt.Sprintf("{\"Version\":%q,\"Time\":%q}\n", version, time.Now().UTC().Format(time.RFC3339))
	check(os.WriteFile(filepath.Join(at, version+".info"), []byte(info), 0o644))
	check(os.WriteFile(filepath.Join(at, "list"), []byte(version+"\n"), 0o644))
}

func fileURL(dir string) string { return "file://" + filepath.ToSlash(dir) }

func run(dir string, env []string, name string, args ...string) {
	fmt.Println("$", name, strings.Join(args, " "))
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Env = dir, append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		log.Fatalf("installcheck: %s %s: %v", name, strings.Join(args, " "), err)
	}
}

func output(dir string, env []string, name string, args ...string) string {
	cmd := exec.Command(name, args...)
	cmd.Dir, cmd.Env, cmd.Stderr = dir, append(os.Environ(), env...), os.Stderr
	out, err := cmd.Output()
	if err != nil {
		log.Fatalf("installcheck: %s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out)
}

func check(err error) {
	if err != nil {
		log.Fatal("installcheck: ", err)
	}
}
