module github.com/apiquota/limiter/integration

go 1.26.0

require (
	github.com/apiquota/limiter v0.0.0
	github.com/go-chi/httprate v0.16.1
	github.com/stretchr/testify v1.12.1
)

require (
	github.com/klauspost/cpuid/v2 v2.2.10 // indirect
	github.com/zeebo/xxh3 v1.0.2 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/sys v0.49.0 // indirect
)

