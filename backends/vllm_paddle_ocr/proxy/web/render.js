// What a page of the answer looks like: markdown rendered by markdown-it with KaTeX formulas, sanitised by
// DOMPurify (no script, handler or remote resource from a document survives), and the layout blocks as SVG.

const markdown = window
  .markdownit({ html: true, linkify: false })
  .use(window.texmath, {
    engine: window.katex,
    delimiters: ["dollars", "brackets"],
    katexOptions: { throwOnError: false, trust: false, strict: "ignore" },
  });

const SANITISE = {
  RETURN_DOM_FRAGMENT: true,
  // Markup that could restyle the page or ask the reader for input has no place in a parsed document.
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "dialog"],
  FORBID_ATTR: ["srcset"],
};

const IMAGE_TYPES = { png: "image/png", gif: "image/gif", webp: "image/webp" };

function imageUrl(path, data) {
  const extension = path.split(".").pop().toLowerCase();
  return `data:${IMAGE_TYPES[extension] || "image/jpeg"};base64,${data}`;
}

/**
 * A page's markdown as a sanitised DOM fragment.
 * @param {string} text markdown.text of the answer
 * @param {Object<string,string>} images markdown.images: picture path -> base64
 */
export function renderMarkdown(text, images = {}) {
  const fragment = window.DOMPurify.sanitize(markdown.render(text || ""), SANITISE);
  for (const img of fragment.querySelectorAll("img")) {
    const path = img.getAttribute("src");
    if (path && Object.prototype.hasOwnProperty.call(images, path)) {
      img.src = imageUrl(path, images[path]);
    } else {
      // Only pictures the answer carries are shown: a document cannot make the page fetch anything.
      img.removeAttribute("src");
      img.classList.add("missing");
      img.alt = path ? `picture ${path} is not in the answer` : "picture";
    }
  }
  for (const link of fragment.querySelectorAll("a[href]")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer";
  }
  return fragment;
}

const SVG = "http://www.w3.org/2000/svg";

/** A stable colour per block label, so the same kind of block looks the same on every page. */
export function labelColour(label) {
  let hash = 0;
  for (const char of label) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360} 70% 42%)`;
}

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

/**
 * Draw a page's parsed blocks (prunedResult.parsing_res_list) into an SVG laid over the page image.
 * Hovering a block shows its label and reading order.
 */
export function drawBlocks(svg, pruned) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${pruned.width} ${pruned.height}`);
  const fontSize = Math.max(12, Math.round(Math.min(pruned.width, pruned.height) / 45));
  for (const block of pruned.parsing_res_list || []) {
    const colour = labelColour(block.block_label);
    const order = block.block_order ?? null;
    const group = svgElement("g", { class: "block", "data-label": block.block_label });
    const title = svgElement("title", {});
    title.textContent = order === null ? `${block.block_label} (not in reading order)` : `${order}. ${block.block_label}`;
    group.append(title);
    const [x1, y1, x2, y2] = block.block_bbox;
    const points = block.block_polygon_points;
    const shape = points
      ? svgElement("polygon", { points: points.map((p) => p.join(",")).join(" ") })
      : svgElement("rect", { x: x1, y: y1, width: Math.max(1, x2 - x1), height: Math.max(1, y2 - y1) });
    shape.setAttribute("stroke", colour);
    shape.setAttribute("fill", colour);
    group.append(shape);
    // A tag on the right half of the page runs leftwards from the box's right edge, so it stays on the page.
    const rightHalf = x1 > pruned.width / 2;
    const tag = svgElement("text", {
      x: rightHalf ? x2 - 3 : x1 + 3,
      y: y1 + fontSize,
      "text-anchor": rightHalf ? "end" : "start",
      "font-size": fontSize,
      fill: colour,
    });
    tag.textContent = order === null ? block.block_label : `${order} ${block.block_label}`;
    group.append(tag);
    svg.append(group);
  }
}
