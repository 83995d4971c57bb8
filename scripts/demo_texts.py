"""Synthetic Chinese text data for the demo tasks, and the CSV / JSON-lines writers that save it: balanced
正面/负面 review sentiment and multi-label review aspects (价格/质量/物流/服务/外观) for run_classification.py,
ADGEN-style attribute -> ad-copy pairs and multi-turn shopping chats (ChatGLM's prompt/response/history format) for
run_seq2seq_ptuning.py, and short templated documents for run_clm.py. Each `make_*` function draws from its own
`random.Random(seed)`, so writing the same sizes twice gives byte-identical files.
"""

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

POSITIVE = "正面"
NEGATIVE = "负面"


# ---------------------------------------------------------------------------
# Sentiment vocabulary. "{i}" marks where an intensifier may go.
# ---------------------------------------------------------------------------

INTENSIFIERS = ("", "", "很", "非常", "特别", "十分", "超级", "真的", "相当", "挺")
# These only read naturally in front of a negative adjective ("有点脏", not "有点干净").
NEGATIVE_ONLY_INTENSIFIERS = ("有点", "有些", "太", "实在")

MIXED_FRACTION = 0.15

SENTIMENT_DOMAINS = {
    "酒店": {
        "subjects": ("这家酒店", "酒店", "这次住的酒店", "这家民宿", "这个宾馆"),
        "openers": (
            "出差住了两晚",
            "国庆带家人入住",
            "朋友推荐订的",
            "我们订的是大床房",
            "第一次住这家",
            "提前一周预订的",
        ),
        "pos": (
            "房间{i}干净",
            "床{i}舒服",
            "前台服务{i}热情",
            "位置{i}方便",
            "早餐{i}丰富",
            "隔音{i}好",
            "窗外风景{i}美",
            "入住手续办得{i}快",
            "卫生间{i}整洁",
        ),
        "neg": (
            "房间{i}脏",
            "床单上有污渍",
            "隔音{i}差",
            "前台态度{i}冷淡",
            "早餐{i}难吃",
            "卫生间有一股霉味",
            "空调噪音{i}大",
            "房间不太干净",
            "热水时有时无",
        ),
        "pos_end": ("下次还会再来住", "以后出差就住这里了", "强烈推荐给大家"),
        "neg_end": ("再也不会来住了", "不建议大家入住", "这个价格真不值"),
    },
    "餐厅": {
        "subjects": ("这家餐厅", "这家店", "这家火锅店", "楼下的小饭馆", "这家面馆"),
        "openers": (
            "周末和朋友去吃的",
            "点了四个菜",
            "带爸妈来吃饭",
            "排了半小时队",
            "中午点的外卖",
            "团购了双人套餐",
        ),
        "pos": (
            "菜品{i}新鲜",
            "味道{i}好",
            "上菜{i}快",
            "分量{i}足",
            "环境{i}优雅",
            "服务员{i}热情",
            "招牌菜{i}好吃",
            "汤底{i}鲜美",
        ),
        "neg": (
            "菜{i}咸",
            "上菜{i}慢",
            "味道{i}一般",
            "分量{i}少",
            "服务员{i}不耐烦",
            "吃完就拉肚子了",
            "菜里吃出了头发",
            "肉不太新鲜",
            "桌子油乎乎的",
        ),
        "pos_end": ("下次还会再来", "值得一试", "已经推荐给同事了"),
        "neg_end": ("再也不会来了", "大家别踩坑", "不推荐"),
    },
    "手机": {
        "subjects": ("这款手机", "新买的手机", "这台手机", "手机"),
        "openers": ("双十一买的", "用了半个月来评价一下", "给爸妈换的", "旧手机摔坏了换的", "等了好久才下单"),
        "pos": (
            "运行{i}流畅",
            "拍照{i}清晰",
            "电池{i}耐用",
            "屏幕{i}清楚",
            "手感{i}好",
            "充电{i}快",
            "系统{i}好用",
            "信号{i}稳定",
        ),
        "neg": (
            "用起来{i}卡",
            "发热{i}严重",
            "电池不耐用",
            "信号{i}差",
            "用了一周就黑屏了",
            "充电{i}慢",
            "拍照{i}模糊",
            "经常自动重启",
        ),
        "pos_end": ("还会回购", "物超所值", "五星好评"),
        "neg_end": ("不会再买这个牌子了", "准备退货了", "差评"),
    },
    "快递": {
        "subjects": ("这家快递", "这次的快递", "快递小哥", "这个快递公司"),
        "openers": ("网购了一箱水果", "寄了一份文件", "买了个大件家具", "周末下的单", "给朋友寄的生日礼物"),
        "pos": (
            "送货{i}快",
            "快递员{i}负责",
            "包装{i}完好",
            "隔天就送到了",
            "送货上门{i}方便",
            "提前打电话通知",
            "物流信息更新{i}及时",
        ),
        "neg": (
            "送货{i}慢",
            "包裹被压坏了",
            "快递员态度{i}差",
            "等了一个星期才到",
            "东西丢了一件",
            "不打招呼就放驿站",
            "物流信息一直不更新",
        ),
        "pos_end": ("以后寄东西就选它", "给个好评", "很放心"),
        "neg_end": ("以后不会再用了", "非常失望", "投诉了也没人管"),
    },
    "衣服": {
        "subjects": ("这件衣服", "这条裙子", "这件外套", "这条裤子", "这件毛衣"),
        "openers": ("按平时的尺码买的", "买来送女朋友的", "换季买的", "看直播下单的", "等了三天才到"),
        "pos": (
            "面料{i}舒服",
            "版型{i}好看",
            "尺码{i}标准",
            "做工{i}精细",
            "洗了也不掉色",
            "穿着{i}显瘦",
            "颜色{i}正",
        ),
        "neg": (
            "面料{i}粗糙",
            "尺码{i}偏小",
            "线头{i}多",
            "洗一次就掉色",
            "穿着{i}扎人",
            "和图片差别{i}大",
            "有一股刺鼻的味道",
        ),
        "pos_end": ("还会回购", "值得购买", "推荐入手"),
        "neg_end": ("已经申请退货了", "千万别买", "后悔了"),
    },
    "书": {
        "subjects": ("这本书", "这套书", "这本小说", "这本教材"),
        "openers": ("老师推荐的", "趁活动买的", "花了一个周末读完", "买来给孩子看的", "看了书评才下单"),
        "pos": (
            "内容{i}精彩",
            "印刷{i}清晰",
            "纸张{i}好",
            "翻译{i}流畅",
            "让人受益匪浅",
            "讲解{i}透彻",
            "故事{i}感人",
        ),
        "neg": (
            "内容{i}空洞",
            "印刷{i}模糊",
            "错别字{i}多",
            "纸张{i}薄",
            "翻译{i}生硬",
            "书角都压坏了",
            "读起来{i}无聊",
        ),
        "pos_end": ("值得一读", "强烈推荐", "会推荐给朋友"),
        "neg_end": ("浪费时间", "不推荐购买", "很失望"),
    },
    "耳机": {
        "subjects": ("这款耳机", "这副耳机", "这个蓝牙耳机"),
        "openers": ("跑步的时候用", "通勤路上天天戴", "618入手的", "替换旧耳机买的"),
        "pos": ("音质{i}好", "降噪{i}强", "连接{i}稳定", "续航{i}长", "戴着{i}舒服", "低音{i}饱满"),
        "neg": ("音质{i}差", "经常断连", "续航{i}短", "戴久了耳朵疼", "有电流声", "降噪{i}弱"),
        "pos_end": ("物超所值", "推荐购买", "很满意"),
        "neg_end": ("不值这个价", "不会回购", "很后悔"),
    },
    "景区": {
        "subjects": ("这个景区", "这里", "这个公园", "古镇"),
        "openers": ("五一假期去的", "带孩子周末来玩", "跟团来的", "自驾过来的"),
        "pos": ("风景{i}美", "空气{i}清新", "门票{i}便宜", "指示牌{i}清楚", "工作人员{i}友善", "厕所{i}干净"),
        "neg": ("人{i}多", "门票{i}贵", "商业化{i}严重", "排队{i}久", "到处都是垃圾", "工作人员态度{i}差"),
        "pos_end": ("值得一去", "还想再来", "推荐带家人来玩"),
        "neg_end": ("不值得去", "再也不来了", "大家慎重"),
    },
}

GENERIC_OPENERS = ("说实话", "先说结论", "用了一段时间", "第一次写评价", "看了很多评价才决定的")
GENERIC_ENDINGS = {
    "pos": ("总体{i}满意", "{i}推荐", "好评", "体验{i}好"),
    "neg": ("{i}失望", "不推荐", "差评", "体验{i}差"),
}
VERDICT_PREFIXES = ("", "", "总的来说", "总体来说", "整体而言", "综合来看")
TURNS = ("但是", "不过", "可是", "但")

# ---------------------------------------------------------------------------
# Multi-label aspect vocabulary: each phrase mentions exactly one aspect.
# ---------------------------------------------------------------------------

ASPECTS = ("价格", "质量", "物流", "服务", "外观")
ASPECT_INTENSIFIERS = ("", "", "很", "非常", "特别", "挺", "真的")

ASPECT_PHRASES = {
    "价格": (
        "价格{i}实惠",
        "性价比{i}高",
        "价格{i}贵",
        "比实体店便宜不少",
        "活动价{i}划算",
        "刚买就降价了",
        "不值这个价钱",
        "价格{i}公道",
        "用了优惠券才一百多块",
        "比别家贵了二十块",
    ),
    "质量": (
        "质量{i}好",
        "做工{i}精细",
        "材质{i}厚实",
        "用了两天就坏了",
        "质量{i}差",
        "做工{i}粗糙",
        "线头{i}多",
        "结实耐用",
        "有一股刺鼻的异味",
        "用料{i}扎实",
    ),
    "物流": (
        "快递{i}快",
        "发货{i}慢",
        "包装破损",
        "第二天就到了",
        "物流信息一直不更新",
        "送货上门{i}方便",
        "快递{i}慢",
        "包装{i}严实",
        "等了一个星期才到货",
        "当天就发货了",
    ),
    "服务": (
        "客服{i}耐心",
        "客服态度{i}差",
        "售后处理{i}及时",
        "退换货{i}麻烦",
        "客服回复{i}快",
        "问客服半天没人理",
        "卖家{i}热情",
        "主动联系补发了",
        "售后推来推去",
        "服务态度{i}好",
    ),
    "外观": (
        "颜色{i}正",
        "款式{i}好看",
        "设计简约大方",
        "和图片不一样",
        "颜值{i}高",
        "外形{i}土",
        "造型{i}新颖",
        "颜色{i}暗沉",
        "看起来{i}高级",
        "样子{i}丑",
    ),
}

PRODUCTS = (
    "这件衣服",
    "这双鞋",
    "这款耳机",
    "这个台灯",
    "这台电饭煲",
    "这个背包",
    "这套餐具",
    "这块手表",
    "这个水杯",
    "这款键盘",
    "这个行李箱",
    "这把椅子",
)
ASPECT_OPENERS = ("", "", "", "第一次在这家店买", "给家里人买的", "用了一个月来追评", "朋友推荐的", "看直播下的单")
ASPECT_CLOSERS = ("", "", "", "就说这么多", "供大家参考", "记录一下", "以上是真实感受")


def _fill(rng: random.Random, phrase: str, intensifiers: tuple[str, ...]) -> str:
    """Replace the `{i}` slot of a phrase with a random intensifier."""
    return phrase.replace("{i}", rng.choice(intensifiers))


def _sentiment_review(rng: random.Random, label: str) -> str:
    """Compose one synthetic review whose wording decides `label`."""
    domain = SENTIMENT_DOMAINS[rng.choice(sorted(SENTIMENT_DOMAINS))]
    want, other = ("pos", "neg") if label == POSITIVE else ("neg", "pos")
    pools = {"pos": INTENSIFIERS, "neg": INTENSIFIERS + NEGATIVE_ONLY_INTENSIFIERS}

    clauses = []
    if rng.random() < 0.5:
        clauses.append(rng.choice(domain["openers"] + GENERIC_OPENERS))
    subject = rng.choice(domain["subjects"]) if rng.random() < 0.6 else ""
    verdict = rng.choice(VERDICT_PREFIXES) + _fill(
        rng, rng.choice(domain[f"{want}_end"] + GENERIC_ENDINGS[want]), pools[want]
    )

    if rng.random() < MIXED_FRACTION:
        # In a "虽然…但是…" review only the clause after the turn word carries the overall sentiment.
        concession = _fill(rng, rng.choice(domain[other]), pools[other])
        point = _fill(rng, rng.choice(domain[want]), pools[want])
        clauses += [f"{subject}虽然{concession}", rng.choice(TURNS) + point]
        if rng.random() < 0.5:
            clauses.append(verdict)
    else:
        points = [_fill(rng, phrase, pools[want]) for phrase in rng.sample(domain[want], rng.choice((1, 2, 2, 3)))]
        points[0] = subject + points[0]
        clauses += points
        if rng.random() < 0.7:
            clauses.append(verdict)
    return "，".join(clauses) + rng.choice("。。！")


def _unique(make: Callable[[], tuple], seen: set[str], max_tries: int = 1000) -> tuple:
    """Call `make()` until the text it returns first is not yet in `seen`, record it and return the result."""
    for _ in range(max_tries):
        result = make()
        if result[0] not in seen:
            seen.add(result[0])
            return result
    raise RuntimeError(f"no new unique text after {max_tries} tries; the requested dataset is too large")


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write rows to a UTF-8 CSV file with `\\n` line endings."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def make_sentiment_data(
    out_dir: str | Path,
    n_train: int = 2000,
    n_validation: int = 300,
    n_test: int = 300,
    seed: int = 42,
    label_noise: float = 0.03,
) -> None:
    """Write a balanced Chinese review sentiment dataset (正面/负面) as train/validation/test CSV files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    # Every text is unique across all splits, so evaluation never sees a training sentence.
    seen: set[str] = set()
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        labels = [POSITIVE] * (n // 2) + [NEGATIVE] * (n - n // 2)
        rng.shuffle(labels)
        rows = [list(_unique(lambda label=label: (_sentiment_review(rng, label), label), seen)) for label in labels]
        # Flipped labels keep accuracy below 100% so the demo's metrics look realistic.
        for index in rng.sample(range(n), round(n * label_noise)):
            rows[index][1] = NEGATIVE if rows[index][1] == POSITIVE else POSITIVE
        write_csv(out_dir / f"{split}.csv", ["text", "label"], rows)
        if split == "test":
            write_csv(out_dir / "test_unlabeled.csv", ["text"], [[text] for text, _ in rows])


def _aspect_review(rng: random.Random) -> tuple[str, list[str]]:
    """Compose one review mentioning 1-3 aspects and return it with its aspect labels."""
    k = rng.choices((1, 2, 3), weights=(0.35, 0.45, 0.2))[0]
    chosen = rng.sample(ASPECTS, k)
    points = [_fill(rng, rng.choice(ASPECT_PHRASES[aspect]), ASPECT_INTENSIFIERS) for aspect in chosen]
    points[0] = rng.choice(PRODUCTS) + points[0]
    clauses = [c for c in (rng.choice(ASPECT_OPENERS), *points, rng.choice(ASPECT_CLOSERS)) if c]
    labels = [aspect for aspect in ASPECTS if aspect in chosen]
    return "，".join(clauses) + rng.choice("。。！"), labels


def make_multilabel_data(
    out_dir: str | Path, n_train: int = 1500, n_validation: int = 300, n_test: int = 200, seed: int = 42
) -> None:
    """Write a multi-label review-aspect dataset as JSON lines plus `|`-joined CSV files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        examples = [_unique(lambda: _aspect_review(rng), seen) for _ in range(n)]
        with open(out_dir / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for text, labels in examples:
                f.write(json.dumps({"text": text, "labels": labels}, ensure_ascii=False) + "\n")
        # The CSV copy exercises the `--label_delimiter` path of the training script.
        write_csv(out_dir / f"{split}.csv", ["text", "labels"], [[t, "|".join(labels)] for t, labels in examples])


# ---------------------------------------------------------------------------
# Prompt -> response data (run_seq2seq_ptuning.py)
# ---------------------------------------------------------------------------

ADGEN_ATTRIBUTES = {
    "类型": ("连衣裙", "衬衫", "卫衣", "外套", "半身裙", "牛仔裤", "针织衫", "风衣"),
    "颜色": ("红色", "白色", "黑色", "蓝色", "粉色", "绿色", "黄色", "灰色"),
    "风格": ("复古", "简约", "甜美", "休闲", "优雅", "通勤"),
    "图案": ("碎花", "条纹", "格子", "纯色", "印花", "波点"),
    "材质": ("棉", "雪纺", "牛仔", "针织", "真丝", "羊毛"),
}
# one fixed phrase per style, so a tiny model can learn attribute -> wording
STYLE_PHRASES = {
    "复古": "带来浓浓的怀旧气息",
    "简约": "干净利落不失格调",
    "甜美": "穿出少女的甜美感",
    "休闲": "日常出行轻松自在",
    "优雅": "尽显知性优雅气质",
    "通勤": "上班穿也得体大方",
}


def _adgen_example(rng: random.Random) -> dict:
    """An ADGEN-style pair: '类型#连衣裙*颜色#红色*...' -> a short ad copy that mentions every attribute."""
    attrs = {key: rng.choice(values) for key, values in ADGEN_ATTRIBUTES.items()}
    keys = ["类型", *rng.sample(["颜色", "风格", "图案", "材质"], k=rng.choice((2, 3, 4)))]
    content = "*".join(f"{k}#{attrs[k]}" for k in keys)
    parts = [f"这款{attrs['颜色'] if '颜色' in keys else ''}{attrs['类型']}"]
    if "材质" in keys:
        parts.append(f"采用{attrs['材质']}面料")
    if "图案" in keys:
        parts.append(f"{attrs['图案']}设计")
    if "风格" in keys:
        parts.append(f"{attrs['风格']}风格{STYLE_PHRASES[attrs['风格']]}")
    return {"content": content, "summary": "，".join(parts) + "。"}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_adgen_data(out_dir, n_train=800, n_validation=100, n_test=100, seed=42) -> None:
    """ADGEN-shaped attribute -> ad-copy data (content / summary, JSON lines), prompts unique across splits."""
    rng, seen = random.Random(seed), set()
    splits = {"train": n_train, "validation": n_validation, "test": n_test}
    for split, n in splits.items():
        rows = []
        while len(rows) < n:
            row = _adgen_example(rng)
            if row["content"] not in seen:
                seen.add(row["content"])
                rows.append(row)
        _write_jsonl(Path(out_dir) / f"{split}.jsonl", rows)


CHAT_ITEMS = ("连衣裙", "运动鞋", "背包", "手机壳", "台灯", "保温杯", "耳机", "围巾")
CHAT_PRICES = dict(zip(CHAT_ITEMS, (199, 259, 129, 29, 89, 59, 399, 69)))  # fixed, so the answer is learnable


def _chat_example(rng: random.Random) -> dict:
    """A shopping-assistant dialogue whose last answer needs the earlier turns (which item, which colour)."""
    item, colour = rng.choice(CHAT_ITEMS), rng.choice(ADGEN_ATTRIBUTES["颜色"])
    price = CHAT_PRICES[item]
    history = [[f"我想买一个{colour}的{item}", f"好的，{colour}{item}有货，请问还有什么需要？"]]
    if rng.random() < 0.5:
        history.append(["能包邮吗？", "满九十九元包邮。"])
    prompt = rng.choice(("它多少钱？", "价格是多少？", "这个卖多少钱？"))
    return {"prompt": prompt, "response": f"{colour}{item}的价格是{price}元。", "history": history}


def make_chat_data(out_dir, n_train=300, n_validation=50, seed=42) -> None:
    """Multi-turn chat data (prompt / response / history, JSON lines) in ChatGLM's format."""
    rng = random.Random(seed)
    for split, n in (("train", n_train), ("validation", n_validation)):
        _write_jsonl(Path(out_dir) / f"{split}.jsonl", [_chat_example(rng) for _ in range(n)])


# ---------------------------------------------------------------------------
# Causal-LM corpus: short templated documents (run_clm.py). Each family has a fixed
# shape with varied slots, so a tiny GPT-2 learns it within a minute on a CPU.
# ---------------------------------------------------------------------------

CLM_CITIES = (
    "北京",
    "上海",
    "广州",
    "深圳",
    "杭州",
    "成都",
    "武汉",
    "西安",
    "南京",
    "重庆",
    "天津",
    "长沙",
    "青岛",
    "厦门",
)
CLM_WEATHER = {  # weather -> the advice that goes with it
    "晴": ("注意防晒。", "适合户外活动。"),
    "多云": ("适合出门散步。", "体感比较舒适。"),
    "阴": ("空气有些潮湿。", "早晚注意加衣。"),
    "小雨": ("出门记得带伞。", "路面湿滑，注意安全。"),
    "大雨": ("尽量减少外出。", "出门记得带伞。"),
    "雷阵雨": ("注意防范雷电。", "尽量减少外出。"),
    "小雪": ("注意保暖。", "路面结冰，小心慢行。"),
}
CLM_NUMBERS = "一二三四五六七八九十"
CLM_DISHES = {  # dish -> its main ingredients
    "西红柿炒鸡蛋": ("西红柿", "鸡蛋"),
    "青椒肉丝": ("青椒", "猪肉"),
    "红烧排骨": ("排骨", "土豆"),
    "麻婆豆腐": ("豆腐", "牛肉末"),
    "蒜蓉西兰花": ("西兰花", "大蒜"),
    "酸辣土豆丝": ("土豆", "干辣椒"),
}
CLM_STEPS = ("大火翻炒", "小火慢炖", "中火煎一下", "焯水备用")
CLM_SEASONINGS = ("盐和酱油", "少许白糖", "生抽和醋", "葱花和香油")
CLM_PEOPLE = ("妈妈", "爸爸", "同学", "朋友", "奶奶", "弟弟", "同事")
CLM_PLACES = {  # place -> what one does there
    "公园": ("散步", "放风筝", "骑自行车"),
    "图书馆": ("看书", "写作业", "查资料"),
    "超市": ("买菜", "买水果", "买零食"),
    "海边": ("游泳", "捡贝壳", "看日落"),
    "电影院": ("看电影", "吃爆米花"),
}
CLM_FEELINGS = ("玩得很开心", "觉得很充实", "收获很大", "度过了愉快的一天", "有点累但是很高兴")
CLM_MEETINGS = ("全体员工大会", "项目进度会", "安全培训", "年终总结会", "新员工见面会")
CLM_ROOMS = ("三楼会议室", "一号报告厅", "二楼培训室", "五楼大会议室")


def _number(rng: random.Random, low: int, high: int) -> str:
    """A Chinese number word between low and high (1-99)."""
    n = rng.randint(low, high)
    tens, ones = divmod(n, 10)
    text = (CLM_NUMBERS[tens - 1] if tens > 1 else "") + ("十" if tens else "")
    return text + (CLM_NUMBERS[ones - 1] if ones else "")


def clm_document(rng: random.Random) -> str:
    """One short document from one of five template families."""
    kind = rng.randrange(5)
    if kind == 0:
        days = rng.sample(("今天", "明天", "后天"), rng.randint(1, 3))
        city, parts = rng.choice(CLM_CITIES), []
        for day in days:
            weather = rng.choice(sorted(CLM_WEATHER))
            low = rng.randint(1, 20)
            parts.append(
                f"{day}{weather}，最高气温{_number(rng, low + 3, low + 12)}度，最低气温{_number(rng, low, low)}度，"
                + rng.choice(CLM_WEATHER[weather])
            )
        return f"{city}天气预报：" + "".join(parts)
    if kind == 1:
        dish = rng.choice(sorted(CLM_DISHES))
        first, second = CLM_DISHES[dish]
        return (
            f"{dish}的做法：先把{first}和{second}洗净切好，再{rng.choice(CLM_STEPS)}，"
            f"最后加入{rng.choice(CLM_SEASONINGS)}，出锅前再翻炒{_number(rng, 1, 5)}分钟即可。"
        )
    if kind == 2:
        place = rng.choice(sorted(CLM_PLACES))
        day = rng.choice(("星期六", "星期天", "今天上午", "昨天下午", "国庆节"))
        return (
            f"{day}，我和{rng.choice(CLM_PEOPLE)}去{place}{rng.choice(CLM_PLACES[place])}，"
            f"{rng.choice(CLM_FEELINGS)}。"
        )
    if kind == 3:
        start, end = rng.sample(CLM_CITIES, 2)
        return (
            f"{rng.choice('GDKTZ')}{rng.randint(10, 999)}次列车从{start}开往{end}，{_number(rng, 6, 22)}点"
            f"{rng.choice(('整', '半', '十分', '四十分'))}发车，全程约{_number(rng, 2, 12)}个小时，请旅客提前检票。"
        )
    return (
        f"通知：公司定于{_number(rng, 1, 12)}月{_number(rng, 1, 28)}日下午{_number(rng, 1, 5)}点在"
        f"{rng.choice(CLM_ROOMS)}召开{rng.choice(CLM_MEETINGS)}，请各部门准时参加。"
    )


def make_clm_corpus(out_dir: str | Path, n_train: int = 4000, n_validation: int = 300, seed: int = 42) -> None:
    """Write train.txt / validation.txt (one document per line) and train.csv (zero_nlp's `content` column)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    seen: set[str] = set()
    for split, n in (("train", n_train), ("validation", n_validation)):
        documents = [_unique(lambda: (clm_document(rng),), seen)[0] for _ in range(n)]
        (out_dir / f"{split}.txt").write_text("\n".join(documents) + "\n", encoding="utf-8")
        if split == "train":
            write_csv(out_dir / "train.csv", ["id", "content"], [[i, d] for i, d in enumerate(documents)])
