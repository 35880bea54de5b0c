#!/usr/bin/env bash
# Refresh the web page's third-party files from the npm registry: the browser builds each package
# publishes, copied as they are, with their licences. Run from anywhere; then update VERSIONS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

fetch() {  # fetch <package@version> <dir>: unpack the package tarball into <dir>/package
  mkdir -p "$2"
  tar xzf "$(npm pack --silent "$1")" -C "$2"
}

fetch markdown-it@15.0.3 mdit
fetch markdown-it-texmath@1.0.0 texmath
fetch dompurify@3.5.0 purify
fetch katex@0.19.1 katex
fetch fflate@0.8.3 fflate
fetch swagger-ui-dist@5.35.0 swagger

rm -rf "$here"/markdown-it "$here"/dompurify "$here"/katex "$here"/fflate "$here"/swagger-ui
mkdir -p "$here"/markdown-it "$here"/dompurify "$here"/katex/fonts "$here"/fflate "$here"/swagger-ui
cp mdit/package/dist/browser/markdown-it.umd.min.js mdit/package/LICENSE "$here"/markdown-it/
cp texmath/package/texmath.js "$here"/markdown-it/texmath.js
cp texmath/package/license.txt "$here"/markdown-it/texmath.LICENSE
cp purify/package/dist/purify.min.js purify/package/LICENSE "$here"/dompurify/
cp katex/package/dist/katex.min.js katex/package/dist/katex.min.css katex/package/LICENSE "$here"/katex/
cp katex/package/dist/fonts/*.woff2 "$here"/katex/fonts/  # every browser the page supports reads woff2
cp fflate/package/umd/index.js "$here"/fflate/fflate.min.js
cp fflate/package/LICENSE "$here"/fflate/
cp swagger/package/swagger-ui-bundle.js swagger/package/swagger-ui.css swagger/package/LICENSE "$here"/swagger-ui/
[ -f swagger/package/NOTICE ] && cp swagger/package/NOTICE "$here"/swagger-ui/
# Source-map comments point at files not shipped; browsers would ask for them.
sed -i -e '/^\/\/# sourceMappingURL=/d' "$here"/*/*.js
sed -i -e 's#/\*\# sourceMappingURL=[^*]*\*/##' "$here"/swagger-ui/swagger-ui.css "$here"/katex/katex.min.css
du -sh "$here"
