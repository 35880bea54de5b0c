"""The /layout-parsing and /restructure-pages schemas: checks, serialisation, parity with paddlex's."""

from __future__ import annotations

import types

import pytest
from pydantic import BaseModel, ValidationError
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy import protocol as schemas


def test_file_is_the_only_required_field() -> None:
    request = schemas.InferRequest(file="aGVsbG8=")
    assert request.prettifyMarkdown and request.returnMarkdownImages and request.mergeTables
    assert not request.showFormulaNumber and not request.restructurePages
    assert request.layoutShapeMode == "auto" and request.temperature is None
    with pytest.raises(ValidationError):
        schemas.InferRequest()  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("topP", 0, "`topP` must be > 0 and ≤ 1"),
        ("topP", 1.5, "`topP` must be > 0 and ≤ 1"),
        ("temperature", -0.1, "`temperature` must be ≥ 0"),
        ("repetitionPenalty", 0, "`repetitionPenalty` must be > 0"),
        ("promptLabel", "poem", "`promptLabel` must be one of: ocr, formula, table, chart, seal, spotting"),
        ("layoutMergeBboxesMode", "biggest", "`layoutMergeBboxesMode` values must be one of"),
        ("layoutMergeBboxesMode", {"3": "huge"}, "`layoutMergeBboxesMode` values must be one of"),
        ("layoutThreshold", 1.2, "`layoutThreshold` must be between 0 and 1"),
        ("layoutThreshold", {"22": "high"}, "`layoutThreshold` value for key '22' must be a number"),
        ("layoutUnclipRatio", 0, "`layoutUnclipRatio` must be > 0"),
        ("layoutUnclipRatio", {"1": [1.0]}, "must be a number or two numbers"),
        ("minPixels", 0, "greater than 0"),
        ("maxNewTokens", -5, "greater than 0"),
        ("layoutShapeMode", "oval", "'rect', 'quad', 'poly' or 'auto'"),
        ("fileType", 2, "0 or 1"),
        ("outputFormats", ["pdf"], "Unsupported `outputFormats` entry 'pdf'"),
    ],
)
def test_invalid_values_are_rejected_with_a_message(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        schemas.InferRequest(file="x", **{field: value})
    assert message in str(info.value)


def test_pixel_range_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match=r"`minPixels` \(10\) cannot be greater than `maxPixels` \(5\)"):
        schemas.InferRequest(file="x", minPixels=10, maxPixels=5)


def test_valid_layout_values_are_accepted() -> None:
    request = schemas.InferRequest.model_validate(
        {
            "file": "x",
            "layoutThreshold": {"0": 0.3, "22": 1},
            "layoutUnclipRatio": [1.0, 1.2],
            "layoutMergeBboxesMode": {"3": "large"},
            "promptLabel": "table",
        }
    )
    assert request.layoutUnclipRatio == (1.0, 1.2)
    assert request.layoutThreshold == {"0": 0.3, "22": 1}


def test_null_fields_are_omitted_but_nulls_inside_pruned_result_stay() -> None:
    page = schemas.LayoutParsingResult(
        prunedResult={"parsing_res_list": [{"block_order": None}]},
        markdown=schemas.MarkdownData(text="# T"),
    )
    body = schemas.dump_response(
        schemas.ResultResponse[schemas.InferResult](
            logId="id",
            result=schemas.InferResult(layoutParsingResults=[page], dataInfo=schemas.ImageInfo(width=2, height=3)),
        )
    )
    assert body == {
        "logId": "id",
        "result": {
            "layoutParsingResults": [
                {"prunedResult": {"parsing_res_list": [{"block_order": None}]}, "markdown": {"text": "# T"}}
            ],
            "dataInfo": {"width": 2, "height": 3, "type": "image"},
        },
        "errorCode": 0,
        "errorMsg": "Success",
    }


def test_error_envelope_and_pdf_data_info() -> None:
    error = schemas.ErrorResponse(logId="id", errorCode=422, errorMsg="Invalid input file")
    assert schemas.dump_response(error) == {"logId": "id", "errorCode": 422, "errorMsg": "Invalid input file"}
    info = schemas.PDFInfo(numPages=1, pages=[schemas.PDFPageInfo(width=5, height=6)])
    assert info.model_dump() == {"numPages": 1, "pages": [{"width": 5, "height": 6}], "type": "pdf"}


def test_restructure_request_defaults() -> None:
    request = schemas.RestructurePagesRequest.model_validate({"pages": [{"prunedResult": {}}]})
    assert request.mergeTables and request.relevelTitles and not request.concatenatePages
    assert request.pages[0].markdownImages is None


# ---------------------------------------------------------------- parity with paddlex's schema


@pytest.fixture(scope="module")
def paddlex_schemas() -> types.ModuleType:
    """paddlex's PaddleOCR-VL serving schema."""
    pytest.importorskip("paddlex")
    from paddlex.inference.serving.schemas import paddleocr_vl

    return paddleocr_vl


@pytest.fixture(scope="module")
def paddlex_envelopes() -> types.ModuleType:
    """paddlex's response envelopes and data info models."""
    pytest.importorskip("paddlex")
    from paddlex.inference.serving.infra import models

    return models


def _shape(model: type[BaseModel]) -> dict[str, tuple[bool, object]]:
    return {
        name: (info.is_required(), None if info.is_required() else info.get_default(call_default_factory=True))
        for name, info in model.model_fields.items()
    }


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("InferRequest", "InferRequest"),
        ("MarkdownData", "MarkdownData"),
        ("LayoutParsingResult", "LayoutParsingResult"),
        ("InferResult", "InferResult"),
        ("Page", "Page"),
        ("RestructurePagesRequest", "RestructurePagesRequest"),
        ("RestructurePagesResult", "RestructurePagesResult"),
    ],
)
def test_fields_match_paddlex(paddlex_schemas: types.ModuleType, ours: str, theirs: str) -> None:
    """Every PaddleX field, with its default; the server's own additions are optional and default to None."""
    shape = _shape(getattr(schemas, ours))
    added = schemas.SERVER_ADDITIONS.get(ours, ())
    assert all(shape.pop(name) == (False, None) for name in added)
    assert shape == _shape(getattr(paddlex_schemas, theirs))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("ErrorResponse", "AIStudioNoResultResponse"), ("ImageInfo", "ImageInfo"), ("PDFInfo", "PDFInfo")],
)
def test_envelopes_match_paddlex(paddlex_envelopes: types.ModuleType, ours: str, theirs: str) -> None:
    assert _shape(getattr(schemas, ours)) == _shape(getattr(paddlex_envelopes, theirs))


def test_success_envelope_matches_paddlex(paddlex_envelopes: types.ModuleType) -> None:
    theirs = paddlex_envelopes.AIStudioResultResponse
    assert _shape(schemas.ResultResponse) == _shape(theirs)


def test_our_response_validates_against_paddlex(
    paddlex_schemas: types.ModuleType, paddlex_envelopes: types.ModuleType
) -> None:
    page = schemas.LayoutParsingResult(
        prunedResult={"page_count": None, "parsing_res_list": []},
        markdown=schemas.MarkdownData(text="", images={"imgs/a.jpg": "AAAA"}),
        outputImages={"layout_det_res": "AAAA"},
    )
    result = schemas.InferResult(
        layoutParsingResults=[page],
        dataInfo=schemas.PDFInfo(numPages=1, pages=[schemas.PDFPageInfo(width=1, height=1)]),
    )
    body = schemas.dump_response(schemas.ResultResponse[schemas.InferResult](logId="x", result=result))
    checked = paddlex_envelopes.AIStudioResultResponse[paddlex_schemas.InferResult].model_validate(body)
    assert checked.result.dataInfo.numPages == 1


@pytest.mark.parametrize(
    "body",
    [
        {"file": "x", "topP": 0},
        {"file": "x", "promptLabel": "OCR"},
        {"file": "x", "layoutThreshold": {"1": 2}},
        {"file": "x", "minPixels": 9, "maxPixels": 3},
        {"file": "x", "layoutMergeBboxesMode": {"1": "small"}, "layoutThreshold": 0.5, "topP": 1},
    ],
)
def test_same_accept_or_reject_as_paddlex(paddlex_schemas: types.ModuleType, body: dict) -> None:
    def accepts(model: type[BaseModel]) -> bool:
        try:
            model.model_validate(body)
        except ValidationError:
            return False
        return True

    assert accepts(schemas.InferRequest) == accepts(paddlex_schemas.InferRequest)
